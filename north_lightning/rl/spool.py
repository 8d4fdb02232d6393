"""The rollout spool: global batches on disk between the sampler (rank 0's threads) and every rank's reader.

The sampler side (`rl/sampler.py`, driven by `VLLMSidecar` / `SyncRollouts`) writes global batch `i` atomically
to `batch_{i:08d}.pt`; the RL datamodule (`datamodules/rl.py`) on every rank and dataloader worker polls for it.
It lives in `rl/` because the writer is here and the reader sits above it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class RolloutSpool:
    """Global batches on disk, written once by the sampler side, read by every rank/worker. A sampler that
    cannot go on leaves `sampler_failed.txt` with its reason, so every reader stops waiting at once (all ranks
    and workers see the directory; the sampler's own exception lives only in rank 0's threads)."""

    FAILED = "sampler_failed.txt"

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def fail(self, reason: str) -> None:
        tmp = self.dir / f".{self.FAILED}.{os.getpid()}.tmp"
        tmp.write_text(reason + "\n")
        os.replace(tmp, self.dir / self.FAILED)

    def failure(self) -> str | None:
        path = self.dir / self.FAILED
        return path.read_text().strip() if path.exists() else None

    def clear_failure(self) -> None:
        (self.dir / self.FAILED).unlink(missing_ok=True)

    def path(self, index: int) -> Path:
        return self.dir / f"batch_{index:08d}.pt"

    def put(self, index: int, batch: dict[str, Any]) -> None:
        tmp = self.dir / f".batch_{index:08d}.{os.getpid()}.tmp"
        torch.save(batch, tmp)
        os.replace(tmp, self.path(index))  # atomic: a reader never sees a half-written batch

    def get(self, index: int, timeout: float, poll: float = 0.05,
            stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Wait for batch `index`. `stop()` true while waiting raises Lightning's `SIGTERMException`: Lightning only
        acts on SIGTERM between batches, so a trainer waiting for a stalled sampler would otherwise ignore it
        until `timeout` (and be SIGKILLed by SLURM meanwhile, leaving containers behind)."""
        deadline = time.monotonic() + timeout
        path = self.path(index)
        while not path.exists():
            failure = self.failure()
            if failure is not None:
                raise RuntimeError(f"no rollout batch {index}: the sampler failed: {failure}")
            if stop is not None and stop():
                from lightning.pytorch.utilities.exceptions import SIGTERMException

                raise SIGTERMException(f"SIGTERM received while waiting for rollout batch {index}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no rollout batch {index} in {self.dir} after {timeout:.0f} s: is the sampler "
                                   "callback (VLLMSidecar / SyncRollouts) configured and alive?")
            time.sleep(poll)
        return torch.load(path, weights_only=False)

    def restart_at(self, index: int) -> int:
        """Ready the spool for a sampler that starts at batch `index`: batches >= index and the failure note of
        an earlier (killed or failed) sampler are removed. Returns the number of batches removed."""
        self.clear_failure()
        return self.discard_from(index)

    def discard_from(self, index: int) -> int:
        """Delete batches >= index (written before a crash, their groups are re-dispatched on resume)."""
        removed = 0
        for p in self.dir.glob("batch_*.pt"):
            if int(p.stem.split("_")[1]) >= index:
                p.unlink()
                removed += 1
        return removed
