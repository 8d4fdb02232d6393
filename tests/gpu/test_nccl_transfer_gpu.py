"""`weight_transfer: nccl` for real: the trainer's rank 0 on GPU 0 broadcasts the weights, once, into two
`vllm serve`s on GPUs 1 and 2 that sit in one NCCL group with it (`rl/engines/nccl_group.py`).

Needs three CUDA devices (NCCL refuses two ranks of a group on one GPU) and the CUDA `vllm` package; with either
missing the tests skip, naming what is missing (CPU CI never selects them: marker `gpu`). What the CPU suite checks
instead: tests/rl/test_server_pool.py (the rank layout and init payloads against vLLM's worker rank arithmetic, the
sent metadata against vLLM's checks), tests/rl/test_server_nccl.py (preflight against a real server, the pool's
group membership with a named stand-in for the CUDA part), tests/rl/test_server.py (refusal without the flag).
Not yet run on GPUs (no 3-GPU machine in this project's sessions so far).

The servers run in float32 with the Triton attention backend (the flash-attn backend has no float32), so their
logprobs can be compared with the CPU reference model: after a transfer they match the sent weights (|Δ| < 5e-2,
TF32 matmuls allowed) and no longer the old ones (a 0.05-sigma perturbation moves the tiny model's logprobs by
~1.6 nats at most, ~0.6 on average).
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import ExitStack

import pytest
import torch

from helpers import free_port, require
from sampler_servers import max_logprob_error, perturbed, running_server, save_tiny_model

pytestmark = pytest.mark.gpu


def _gpu(k: int) -> str:
    """The k-th of this process's visible GPUs (the trainer keeps cuda:0)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[k].strip() if visible else str(k)


@pytest.fixture(scope="module")
def nccl_servers(tmp_path_factory):
    """(CPU reference model, its HF dir, [base URL of the server on GPU 1, on GPU 2]), NCCL transfers accepted."""
    require(torch.cuda.device_count() >= 3, "one NCCL group of trainer + 2 servers needs 3 CUDA devices")
    require(importlib.util.find_spec("vllm") is not None, "the CUDA vllm package is not installed")
    tmp = tmp_path_factory.mktemp("nccl")
    model = save_tiny_model(tmp / "m")
    with ExitStack() as stack:
        urls = [stack.enter_context(running_server(
            tmp / "m", tmp / f"server{k}.log", start_timeout=300, env={"CUDA_VISIBLE_DEVICES": _gpu(k)},
            extra_args=["--weight-transfer-config", '{"backend": "nccl"}', "--attention-backend", "TRITON_ATTN",
                        "--kv-cache-memory-bytes", str(256 * 2**20), "--enforce-eager"])) for k in (1, 2)]
        yield model, tmp / "m", urls


def _max_error(model, policy) -> float:
    return max_logprob_error(model, policy)[0]


def test_one_broadcast_puts_the_trainers_weights_into_both_servers(nccl_servers):
    """State dicts (on the GPU and on the CPU) and a checkpoint directory, over one group of both servers; then
    the group is released on both sides and a new one forms on another port."""
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.nccl_group import NCCLGroup
    from north_lightning.rl.engines.server import OpenAIServerPolicy
    from north_lightning.rl.engines.weight_transfer import NCCLSettings

    model, model_dir, urls = nccl_servers
    servers = [OpenAIServerPolicy(u, model_dir=model_dir) for u in urls]

    def all_match(weights_of) -> bool:
        for s in servers:
            s.reset_prefix_cache()
        return all(_max_error(weights_of, s) < 5e-2 for s in servers)

    assert all_match(model)
    group = NCCLGroup(NCCLSettings(master_address="127.0.0.1", master_port=free_port()), urls)
    new1, new2 = perturbed(model, 1), perturbed(model, 2)
    assert group.send([0, 1], {k: v.cuda() for k, v in to_hf_state_dict(new1).items()}) == {}
    assert group.client is not None and [p["rank_offset"] for p in group.client.sent_init.values()] == [1, 2]
    assert all_match(new1) and _max_error(model, servers[0]) > 0.5
    assert group.send([0, 1], to_hf_state_dict(new2)) == {} and group.formed == 1  # same group, from the CPU
    assert all_match(new2)
    assert group.send([0, 1], model_dir) == {}  # the start weights, read from safetensors here and streamed
    assert all_match(model)
    assert group.send([1], to_hf_state_dict(new1)) == {} and group.formed == 2  # membership changed: a new group
    assert _max_error(new1, servers[1]) < 5e-2 and _max_error(model, servers[0]) < 5e-2
    group.close()  # releases both servers, so a new trainer can join
    again = NCCLGroup(NCCLSettings(master_address="127.0.0.1", master_port=free_port()), urls)
    assert again.send([0, 1], to_hf_state_dict(new2)) == {}
    assert all_match(new2)
    again.close()
    for s in servers:
        s.close()


@pytest.mark.parametrize("mode", ["keep", "drain"])
def test_server_pool_exports_over_nccl(nccl_servers, tmp_path, mode):
    """What `VLLMSidecar(engine="servers", engine_kwargs={"weight_transfer": "nccl"})` does at each export."""
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.server import ServerPool

    model, model_dir, urls = nccl_servers
    pool = ServerPool(urls, model_dir=model_dir, weights_dir=tmp_path / "w", weight_transfer="nccl",
                      weight_update_mode=mode, nccl={"master_address": "127.0.0.1", "master_port": free_port()})
    try:
        new = perturbed(model, 3)
        seconds = pool.load_weights({k: v.cuda() for k, v in to_hf_state_dict(new).items()}, version=1)
        assert pool.policy_version == 1 and seconds > 0 and not (tmp_path / "w").exists()
        for _ in range(2):  # one call on each server
            err, comp = max_logprob_error(new, pool)
            assert err < 5e-2 and comp.versions == [1] * len(comp.token_ids)
        pool.reload(model_dir)
        assert max(_max_error(model, pool) for _ in range(2)) < 5e-2
    finally:
        pool.close()
