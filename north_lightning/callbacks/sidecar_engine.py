"""Which sampler engine the RL callbacks start, and how they check its settings.

Kept apart from the callbacks' hooks (`callbacks/vllm_sidecar.py`) because it is the one place that knows the three
engine kinds: `inprocess` (the stepped vLLM engine in the trainer's process, tests), `subprocess` (the same engine
in a child process, the default) and `servers` (`vllm serve` sampler nodes through `ServerPool`). Settings are
checked when the callback is constructed, so a bad YAML key fails before any rank starts waiting for another.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

ENGINES = ("inprocess", "subprocess", "servers")
SAMPLER_URLS_ENV = "NORTH_SAMPLER_URLS"
SERVER_KWARGS = {"urls", "timeout", "model", "weight_transfer", "nccl", "bucketed_reload"}


def sampler_urls(urls: list[str] | str | None) -> list[str]:
    """`engine_kwargs.urls`, else the comma-separated `NORTH_SAMPLER_URLS` the SLURM script exports."""
    if urls is None:
        urls = os.environ.get(SAMPLER_URLS_ENV, "")
    if isinstance(urls, str):
        urls = [u.strip() for u in urls.split(",")]
    urls = [u for u in urls if u]
    if not urls:
        raise ValueError(f"engine: servers needs sampler URLs: set engine_kwargs.urls or the {SAMPLER_URLS_ENV} "
                         "environment variable (comma-separated base URLs of `vllm serve` sampler nodes)")
    return urls


def check_engine_settings(engine: str, engine_kwargs: Mapping[str, Any]) -> None:
    """Refuse an unknown engine kind, `engine_kwargs` that do not apply to sampler servers (their own settings
    are `vllm serve` flags) and a malformed weight-transfer block, naming the key."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    unknown = sorted(set(engine_kwargs) - SERVER_KWARGS) if engine == "servers" else []
    if unknown:
        raise ValueError(f"engine_kwargs {unknown} do not apply to engine: servers (known: {sorted(SERVER_KWARGS)}); "
                         "the servers' own settings are `vllm serve` flags (slurm --sampler-args)")
    if engine == "servers":
        from north_lightning.rl.engines.weight_transfer import parse_weight_transfer

        parse_weight_transfer(engine_kwargs.get("weight_transfer", "files"), engine_kwargs.get("nccl"))


def engine_dtype(export_dtype: str | None, engine: str, engine_kwargs: Mapping[str, Any]) -> torch.dtype:
    """The engine's dtype, which the weights are gathered in: `export_dtype`, else the engine's `dtype`
    (in-process / subprocess engines: float32 unless set), else bf16 on a GPU and fp32 on the CPU (servers)."""
    from north_lightning.model.parallelize import dtype_from_name

    name = export_dtype or engine_kwargs.get("dtype")
    if name is None:
        name = "float32" if engine != "servers" or not torch.cuda.is_available() else "bfloat16"
    return dtype_from_name(name)


def start_engine(engine: str, engine_kwargs: Mapping[str, Any], model_dir: Path, *, weights_dir: Path,
                 policy_version: int, weight_update_mode: str) -> Any:
    """Start the sampler engine on `model_dir`'s weights. Sampler servers started from another checkpoint (the
    SFT export, or before a resume) are reloaded from `model_dir` first."""
    if engine == "servers":
        from north_lightning.rl.engines.server import ServerPool

        kwargs = dict(engine_kwargs)
        urls = sampler_urls(kwargs.pop("urls", None))
        pool = ServerPool(urls, model_dir=model_dir, weights_dir=weights_dir, policy_version=policy_version,
                          weight_update_mode=weight_update_mode, **kwargs)
        pool.reload(model_dir)
        return pool
    if engine == "inprocess":
        from north_lightning.rl.engines.stepped import SteppedVLLMEngine as cls
    else:
        from north_lightning.rl.engines.child import SubprocessVLLMEngine as cls
    return cls(model_dir, policy_version=policy_version, weight_update_mode=weight_update_mode, **engine_kwargs)
