"""The one full-weight gather of a (possibly sharded) North model: bucket by bucket, in a chosen dtype, to one rank.

Why buckets: `full_tensor()` on every parameter at once (what the sidecar and the HF export used to do) leaves each
GPU holding the whole fp32 model for a moment (~122 GB at 30.5B parameters). Here the state dict is walked in a
fixed order and cut into buckets of at most `bucket_bytes` (in the target dtype); each bucket's tensors are cast
*on their shards* to the target dtype (a DTensor cast touches only the local shard), all-gathered one tensor at a
time, kept on the destination rank and dropped at once elsewhere, and handed to the consumer as one dict. The
consumer streams it on (a safetensors file of the run directory, a broadcast to the samplers) and lets go of it
before asking for the bucket after next, so no rank holds more than its own shard plus two buckets of full tensors
(the one being consumed and the one being gathered).

The bytes alive are counted by the gather itself, not read from the allocator (on a small model the allocator's
noise would hide them): every full tensor it creates (a gathered DTensor, or a cast copy of a replicated one) adds
its size to `GatherStats.alive_bytes` and a `weakref.finalize` on the tensor subtracts it when the last reference
goes, whoever held it. `peak_bytes` is the high-water mark; a caller checks it against `2 * bucket_bytes`.

A collective: every rank runs the same loop (the plan is computed from names, shapes and dtypes, which every rank
knows without communicating). Tensors larger than a bucket cannot be split (engines load whole tensors), so the
plan refuses a bucket smaller than the largest tensor, naming it.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = ()  # type: ignore[assignment,misc]


@dataclass
class GatherStats:
    """Full-tensor bytes the gather created that are still alive (see the module docstring)."""

    bucket_bytes: int
    alive_bytes: int = 0
    peak_bytes: int = 0
    buckets: int = 0
    tensors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def born(self, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        with self._lock:
            self.alive_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.alive_bytes)
            self.tensors += 1
        weakref.finalize(tensor, self._died, nbytes)

    def _died(self, nbytes: int) -> None:
        with self._lock:
            self.alive_bytes -= nbytes


def _nbytes(tensor: torch.Tensor, dtype: torch.dtype | None) -> int:
    wire = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    return tensor.numel() * torch.empty((), dtype=wire).element_size()


def plan_buckets(state: dict[str, torch.Tensor], bucket_bytes: int, dtype: torch.dtype | None) -> list[list[str]]:
    """Names in state-dict order, cut into consecutive buckets of at most `bucket_bytes` (in `dtype`)."""
    buckets: list[list[str]] = [[]]
    used = 0
    for name, tensor in state.items():
        n = _nbytes(tensor, dtype)
        if n > bucket_bytes:
            raise ValueError(f"export bucket of {bucket_bytes / 2**20:.1f} MiB is smaller than tensor {name!r} "
                             f"({n / 2**20:.1f} MiB in {dtype or tensor.dtype}); raise the bucket size "
                             "(placement.export_bucket_mb / export_bucket_mb)")
        if buckets[-1] and used + n > bucket_bytes:
            buckets.append([])
            used = 0
        buckets[-1].append(name)
        used += n
    return [b for b in buckets if b]


def _is_dst(dst: int) -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == dst


def iter_full_buckets(model: nn.Module, *, bucket_bytes: int, dtype: torch.dtype | None = None, dst: int = 0,
                      stats: GatherStats | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the model's full state dict bucket by bucket on rank `dst` ({} on the other ranks, same count).
    Collective: iterate it to the end on every rank. Floating tensors come in `dtype` (None: as stored)."""
    state = model.state_dict()
    stats = stats if stats is not None else GatherStats(bucket_bytes)
    is_dst = _is_dst(dst)
    for names in plan_buckets(state, bucket_bytes, dtype):
        bucket: dict[str, torch.Tensor] = {}
        for name in names:
            tensor = state[name].detach()
            if isinstance(tensor, DTensor) and tensor.device_mesh.device_type != tensor.to_local().device.type:
                # FSDP2 CPU offload: the shard lives in host memory, the all-gather runs on the mesh's device
                tensor = tensor.to(torch.device(tensor.device_mesh.device_type, torch.cuda.current_device())
                                   if tensor.device_mesh.device_type == "cuda" else tensor.device_mesh.device_type)
            cast = dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype
            if cast:
                tensor = tensor.to(dtype)  # on a DTensor: the local shard only
            if isinstance(tensor, DTensor):
                full = tensor.full_tensor()
            elif cast:
                full = tensor  # a cast copy of a replicated tensor
            else:
                full = None  # the module's own tensor: part of this rank's shard, no extra bytes
            if full is not None:
                stats.born(full)
            if is_dst:
                bucket[name] = full if full is not None else tensor
            del full, tensor
        stats.buckets += 1
        yield bucket
        del bucket


def full_state_dict(model: nn.Module, dtype: torch.dtype | None = torch.float32, dst: int = 0,
                    bucket_bytes: int = 1 << 30) -> dict[str, torch.Tensor]:
    """The whole state dict on CPU on rank `dst` ({} elsewhere), through `iter_full_buckets`. For small models and
    tests: it keeps every bucket (the streaming consumers do not)."""
    out: dict[str, torch.Tensor] = {}
    largest = max((_nbytes(t, dtype) for t in model.state_dict().values()), default=0)
    for bucket in iter_full_buckets(model, bucket_bytes=max(bucket_bytes, largest), dtype=dtype, dst=dst):
        out.update({k: v.to("cpu") for k, v in bucket.items()})
    return out


def write_hf_streaming(model: nn.Module, config: Any, out_dir: str | Path, *, bucket_bytes: int,
                       dtype: torch.dtype | None = None, dst: int = 0, stats: GatherStats | None = None,
                       tokenizer_dir: str | Path | None = None,
                       on_file: Callable[[Path], None] | None = None) -> GatherStats:
    """Stream the model into an HF directory: one safetensors file per bucket (HF names, per-expert layout),
    then the index and config.json, written by rank `dst`. Collective. Returns the gather's statistics.
    `on_file(path)` is called on rank `dst` with each bucket's file once it is complete (e.g. sampler servers
    loading the export bucket by bucket while the next one is gathered)."""
    from north_lightning.model.hf import _umask, finish_hf_dir, hf_tensors

    from safetensors.torch import save_file

    stats = stats if stats is not None else GatherStats(bucket_bytes)
    out = Path(out_dir)
    is_dst = _is_dst(dst)
    n = len(plan_buckets(model.state_dict(), bucket_bytes, dtype))
    if is_dst:
        out.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total, out_dtype = 0, None
    for i, bucket in enumerate(iter_full_buckets(model, bucket_bytes=bucket_bytes, dtype=dtype, dst=dst,
                                                 stats=stats)):
        if not is_dst:
            continue
        file = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for name, tensor in bucket.items():
            for hf_name, part in hf_tensors(name, tensor):
                tensors[hf_name] = part.to("cpu")
                weight_map[hf_name] = file
                total += part.numel() * part.element_size()
                out_dtype = out_dtype or (part.dtype if part.is_floating_point() else None)
        del bucket
        tmp = out / f".{file}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600; exports follow the umask (as save_pretrained)
        tmp.replace(out / file)
        del tensors
        if on_file is not None:
            on_file(out / file)
    if is_dst:
        finish_hf_dir(out, config, weight_map, total, out_dtype or torch.float32, tokenizer_dir=tokenizer_dir)
    return stats
