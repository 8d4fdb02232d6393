"""How an export reaches an engine that loads weights from a path (subprocess engine, `vllm serve` servers):
an HF-named state dict written once as a checkpoint directory next to the engine's config, and the rule that
policy versions only increase. Split from `rl/engines/inprocess.py`, which holds the engines themselves."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch


def check_version(current: int, version: int) -> None:
    """Policy versions only increase: an export older than what the engine holds is a bug upstream."""
    if version <= current:
        raise ValueError(f"policy version must increase: engine has {current}, got {version}")


def save_hf_weights(weights: Mapping[str, torch.Tensor], model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write an HF-named state dict as a checkpoint directory next to the engine's config (for engines that
    load weights from a path: subprocess, server)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        if (Path(model_dir) / name).exists():
            shutil.copy(Path(model_dir) / name, out / name)
    tmp = out / "model.safetensors.tmp"
    save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(tmp))
    os.replace(tmp, out / "model.safetensors")
    return out


class WeightsWriter:
    """The preamble every path-reloading engine (subprocess, server, server pool) shares: check the version,
    and turn the export into a directory the engine can read, i.e. a checkpoint directory as given, or a state
    dict written once as `<out_dir>/v<version>`. Only the directory loaded last is kept (a 30B export is ~60 GB),
    and `out_dir` (a fresh temporary directory by default) must be readable by every engine that reloads."""

    def __init__(self, model_dir: str | Path | None, out_dir: str | Path | None = None,
                 prefix: str = "north_weights_") -> None:
        self.model_dir, self.prefix = model_dir, prefix
        self.owned = out_dir is None  # a temporary directory, made on the first write
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.current: str | None = None  # the directory the engine(s) hold now, when we wrote it or were given it

    def path(self, weights: Mapping[str, torch.Tensor] | str | Path, current_version: int, version: int) -> str:
        check_version(current_version, version)
        if isinstance(weights, (str, Path)):
            return str(weights)
        if self.model_dir is None:
            raise ValueError("load_weights(state_dict) needs model_dir (its config.json goes next to the weights)")
        if self.out_dir is None:
            self.out_dir = Path(tempfile.mkdtemp(prefix=self.prefix))
        return str(save_hf_weights(weights, self.model_dir, self.out_dir / f"v{version}"))

    def _written(self, path: str | None) -> bool:
        return path is not None and self.out_dir is not None and Path(path).parent == self.out_dir

    def loaded(self, path: str) -> None:
        """`path` is what the engine holds now: remove the previous directory if we wrote it."""
        if self._written(self.current) and self.current != path:
            shutil.rmtree(self.current, ignore_errors=True)
        self.current = path

    def close(self) -> None:
        if self.owned and self.out_dir is not None:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        elif self._written(self.current):
            shutil.rmtree(self.current, ignore_errors=True)
