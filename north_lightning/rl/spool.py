"""The rollout spool: global batches on disk between the sampler (rank 0's threads) and every rank's reader.

The sampler side (`rl/sampler.py`, driven by `VLLMSidecar` / `SyncRollouts`) writes global batch `i` atomically
to `batch_{i:08d}.safetensors`; the RL datamodule (`datamodules/rl.py`) on every rank and dataloader worker polls
for it. It lives in `rl/` because the writer is here and the reader sits above it.

A batch is plain data (dicts with str keys, lists, numbers, strings, None). It is stored without pickle, so that
write access to the run directory is not code execution in the trainer: the numeric lists (token ids,
logprobs, ...) become safetensors tensors and the rest is JSON in the safetensors header, each list replaced by
`{"__tensor__": name}`. Reading gives back the same plain data (lists of Python ints/floats).

One exception for bulk integer data: an integer `torch.Tensor` value (e.g. a rollout's `routed_experts`, [tokens, MoE
layers, top_k] expert indices for router replay, millions of entries at scale) is stored as that tensor, keeping
its compact dtype, marked `{"__array__": name}`, and read back as a tensor rather than a list.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

SPOOL_FORMAT = "north_lightning.spool/1"
_TENSOR_KEY = "__tensor__"
_ARRAY_KEY = "__array__"  # an integer tensor value, read back as a tensor
_ARRAY_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


class SpoolFormatError(ValueError):
    """A spool file is not a batch this code wrote (wrong format, corrupt or tampered with); names the file."""


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Plain data -> JSON-able data, moving numeric lists into `tensors`."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"spool batches need str dict keys, got {[k for k in value if not isinstance(k, str)]}")
        return {k: _encode(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(type(x) is int for x in value) and _INT64[0] <= min(value) and max(value) <= _INT64[1]:
            dtype = torch.int64
        elif value and all(type(x) is float for x in value):
            dtype = torch.float64
        else:
            return [_encode(v, tensors) for v in value]
        name = f"t{len(tensors)}"
        tensors[name] = torch.tensor(value, dtype=dtype)
        return {_TENSOR_KEY: name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor) and value.dtype in _ARRAY_DTYPES:
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {_ARRAY_KEY: name}
    raise TypeError(f"spool batches hold plain data only, got {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR_KEY}:
            return tensors[value[_TENSOR_KEY]].tolist()
        if set(value) == {_ARRAY_KEY}:
            return tensors[value[_ARRAY_KEY]]
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def write_batch(path: str | Path, batch: dict[str, Any]) -> None:
    """Write `batch` to `path` (not atomically: `RolloutSpool.put` writes a temporary name and renames)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(batch, tensors)
    save_file(tensors, str(path), metadata={"format": SPOOL_FORMAT, "batch": json.dumps(structure)})


def read_batch(path: str | Path) -> dict[str, Any]:
    """A batch written by `write_batch`. Raises `SpoolFormatError` naming the file for anything else."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        if meta.get("format") != SPOOL_FORMAT:
            raise SpoolFormatError(f"{path}: not a rollout spool batch (format {meta.get('format')!r})")
        return _decode(json.loads(meta["batch"]), tensors)
    except SpoolFormatError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise SpoolFormatError(f"{path}: unreadable rollout spool batch ({type(err).__name__}: {err})") from err


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
        return self.dir / f"batch_{index:08d}.safetensors"

    def put(self, index: int, batch: dict[str, Any]) -> None:
        tmp = self.dir / f".batch_{index:08d}.{os.getpid()}.tmp"
        write_batch(tmp, batch)
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
        return read_batch(path)

    def restart_at(self, index: int) -> int:
        """Ready the spool for a sampler that starts at batch `index`: batches >= index and the failure note of
        an earlier (killed or failed) sampler are removed. Returns the number of batches removed."""
        self.clear_failure()
        return self.discard_from(index)

    def discard_from(self, index: int) -> int:
        """Delete batches >= index (written before a crash, their groups are re-dispatched on resume)."""
        removed = 0
        for p in self.dir.glob("batch_*.safetensors"):
            if int(p.stem.split("_")[1]) >= index:
                p.unlink()
                removed += 1
        return removed

    def indices(self) -> list[int]:
        """Indices of the batches on disk, ascending."""
        return sorted(int(p.stem.split("_")[1]) for p in self.dir.glob(f"batch_*{self.path(0).suffix}"))

    def prune_below(self, index: int) -> list[int]:
        """Delete batches < `index` (the caller decides what is no longer needed: see
        `callbacks/spool_retention.py`). Returns the indices removed."""
        removed = []
        for i in self.indices():
            if i >= index:
                break
            self.path(i).unlink(missing_ok=True)
            removed.append(i)
        return removed
