"""Spool retention: which rollout batches may be deleted during a run, so disk use stays bounded.

A global batch `i` is trained at optimizer step `i + 1`. It is deleted once both hold:
- it was consumed: `i < trainer.global_step` (every rank read it before its gradients were reduced, so no rank or
  dataloader worker can still need it);
- it is older than the oldest checkpoint still on disk: `i < min(step of each kept checkpoint)`. A run resumed from
  a checkpoint of step `s` reads batches from `s` on (`RolloutBatchStream(start_step=s)`), so every kept checkpoint
  keeps the batches it would train next; the sampler of a resumed run rewrites them (`RolloutSpool.restart_at`),
  but they stay available to replay a resume on the same data. With no checkpoint on disk a resume starts afresh
  at step 0 and rewrites everything, so only the first rule applies.

Disk use is then bounded by the batches between the oldest kept checkpoint and the sampler's prefetch horizon:
(save_top_k x checkpoint interval + prefetch + 1) batches, whatever the run's length.

Kept checkpoints are found on disk, in every `ModelCheckpoint`'s `dirpath` (files or distributed-checkpoint folders
named `*.ckpt`; ModelCheckpoint removes the ones it no longer keeps). A checkpoint's step is read from it
(`global_step`: `meta.pt` of a folder, or the file itself memory-mapped, tensors not read; torch's restricted
unpickler with the run's allow-list, `model/safe_load.py`) once per file version.
If a checkpoint cannot be read (being written by an asynchronous IO plugin, say), nothing is deleted this time.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from north_lightning.rl.spool import RolloutSpool

log = logging.getLogger(__name__)

_STEP_CACHE: dict[tuple[str, int], int] = {}


def checkpoint_step(path: Path) -> int:
    """`global_step` stored in a Lightning checkpoint (a file, or a distributed checkpoint folder's `meta.pt`)."""
    meta = path / "meta.pt" if path.is_dir() else path
    key = (str(meta.resolve()), meta.stat().st_mtime_ns)
    if key not in _STEP_CACHE:
        from north_lightning.model.safe_load import safe_checkpoint_globals

        with safe_checkpoint_globals():  # the restricted unpickler, as every checkpoint read of the run directory
            state = torch.load(meta, map_location="cpu", weights_only=True, mmap=not path.is_dir())
        if "global_step" not in state:
            raise KeyError(f"{meta}: no 'global_step' (not a Lightning checkpoint?)")
        _STEP_CACHE[key] = int(state["global_step"])
    return _STEP_CACHE[key]


def kept_checkpoint_steps(trainer: Any) -> list[int] | None:
    """Steps of the checkpoints on disk in every ModelCheckpoint's folder; None if one could not be read."""
    steps = []
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        dirpath = getattr(callback, "dirpath", None)
        if not dirpath or not Path(dirpath).is_dir():
            continue
        for path in Path(dirpath).glob(f"*{getattr(callback, 'FILE_EXTENSION', '.ckpt')}"):
            try:
                steps.append(checkpoint_step(path))
            except (OSError, RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as err:
                log.warning("spool retention: cannot read the step of checkpoint %s (%s); deleting nothing now",
                            path, err)
                return None
    return steps


def prune_spool(trainer: Any, spool: RolloutSpool) -> list[int]:
    """Delete the batches no rank and no kept checkpoint needs (module docstring); returns their indices. Call on
    global rank 0 after an optimizer step."""
    steps = kept_checkpoint_steps(trainer)
    if steps is None:
        return []
    bound = int(trainer.global_step)
    if steps:
        bound = min(bound, min(steps))
    return spool.prune_below(bound)
