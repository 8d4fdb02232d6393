"""Checkpoint files that survive a crash mid-write, are read without running code, and fail clearly.

Lightning's `TorchCheckpointIO` writes `last.ckpt` in place: a job killed while writing it (SLURM's time limit,
a full disk) leaves a truncated file that `--ckpt_path last` then cannot load, with no hint that the previous
checkpoints are intact. Here a checkpoint is written to a temporary name in the same directory and renamed
(atomic on POSIX); reading uses the restricted unpickler (`model/safe_load.py`), and a corrupt file's error
names it and lists the other checkpoints next to it to resume from instead.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from north_lightning.model.safe_load import safe_checkpoint_globals


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint); names it and the alternatives."""


def _local(path: Any) -> Path | None:
    text = str(path)
    return None if "://" in text else Path(text)


def earlier_checkpoints(path: Path) -> list[Path]:
    """The other checkpoint files in `path`'s directory, newest first."""
    others = [p for p in path.parent.glob("*.ckpt") if p.resolve() != path.resolve()]
    return sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with temporary-name + rename writes and restricted, explained reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = _local(path)
        if target is None:  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
        try:
            with tmp.open("wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        target = _local(path)
        try:
            with safe_checkpoint_globals():
                return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            if "Weights only load failed" in str(err):
                raise  # a checkpoint holding code or unknown types: refused, not corrupt
            raise self._corrupt(target or Path(str(path)), err) from err
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
            raise self._corrupt(target or Path(str(path)), err) from err

    @staticmethod
    def _corrupt(path: Path, err: BaseException) -> CorruptCheckpointError:
        others = earlier_checkpoints(path) if path.parent.is_dir() else []
        offer = (f"; resume from an earlier one instead, e.g. --ckpt_path {others[0]} (others here: "
                 f"{', '.join(p.name for p in others[1:]) or 'none'})" if others else "; no other checkpoint here")
        return CorruptCheckpointError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: "
                                      f"{str(err)[:200]}){offer}")
