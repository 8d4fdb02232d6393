"""Load an HF safetensors checkpoint straight into an already sharded model, each rank reading only its slices.

Why: `NorthForCausalLM.from_pretrained` reads the whole checkpoint into host memory. For the 30B model that is
61 GB (bf16) per process, i.e. ~490 GB per 8-GPU node before anything is sharded. Here the model is built on the
meta device, sharded by `parallelize_north` (FSDP2 DTensors, expert-parallel DTensors), materialised empty, and
then every parameter's *local* block is read with safetensors' lazy slicing. Per-expert HF tensors
(`...experts.<e>.gate_proj.weight`, vLLM's layout) and the fused v5 layout (`...experts.gate_up_proj`) are both
understood; the fused parameter's rows are [gate; up] as in `hf.py`.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from north_lightning.model.hf import open_safetensors
from north_lightning.model.transformer import NorthForCausalLM

INDEX_NAME = "model.safetensors.index.json"


def _weight_map(path: Path) -> dict[str, str]:
    index = path / INDEX_NAME
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    single = path / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{path}: neither {INDEX_NAME} nor model.safetensors found")
    with open_safetensors(single) as f:
        return {key: "model.safetensors" for key in f.keys()}


def _local_block(param: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """(this rank's storage for `param`, the global index of that block)."""
    if isinstance(param, DTensor):
        shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
        return param.to_local(), tuple(slice(o, o + n) for o, n in zip(offset, shape))
    return param.data, tuple(slice(0, n) for n in param.shape)


class _Reader:
    """Lazy slices of the checkpoint's tensors, opened once per shard file."""

    def __init__(self, path: Path, stack: ExitStack) -> None:
        self.path, self.map = path, _weight_map(path)
        self.files = {name: stack.enter_context(open_safetensors(path / name))
                      for name in sorted(set(self.map.values()))}

    def has(self, key: str) -> bool:
        return key in self.map

    def read(self, key: str, index: tuple[slice, ...]) -> torch.Tensor:
        if key not in self.map:
            raise KeyError(f"{self.path}: checkpoint has no tensor {key!r}")
        return self.files[self.map[key]].get_slice(key)[index]


def _read_fused_experts(reader: _Reader, name: str, index: tuple[slice, ...], ffn: int) -> torch.Tensor:
    """A block of our fused [E, 2F, D] / [E, D, F] expert parameter from per-expert HF tensors."""
    prefix, kind = name.rsplit(".", 1)  # model.layers.N.mlp.experts, gate_up_proj | down_proj
    experts, rows, cols = index
    blocks = []
    for e in range(experts.start, experts.stop):
        if kind == "down_proj":
            blocks.append(reader.read(f"{prefix}.{e}.down_proj.weight", (rows, cols)))
            continue
        parts = []  # rows of [gate; up] that fall in `rows`
        for proj, lo in (("gate_proj", 0), ("up_proj", ffn)):
            start, stop = max(rows.start, lo), min(rows.stop, lo + ffn)
            if start < stop:
                parts.append(reader.read(f"{prefix}.{e}.{proj}.weight", (slice(start - lo, stop - lo), cols)))
        blocks.append(torch.cat(parts))
    return torch.stack(blocks)


@torch.no_grad()
def load_hf_sharded(model: NorthForCausalLM, path: str | Path) -> None:
    """Fill every (local block of a) parameter of `model` from the HF directory `path`. Collective-free: each rank
    reads its own blocks. Raises naming the first tensor that is missing or mis-shaped."""
    path = Path(path)
    ffn = model.config.expert_intermediate_size
    with ExitStack() as stack:
        reader = _Reader(path, stack)
        for name, param in model.named_parameters():
            local, index = _local_block(param)
            if local.numel() == 0:
                continue
            if name.endswith((".experts.gate_up_proj", ".experts.down_proj")) and not reader.has(name):
                block = _read_fused_experts(reader, name, index, ffn)
            else:
                block = reader.read(name, index)
            if block.shape != local.shape:
                raise ValueError(f"{path}: {name} block {tuple(block.shape)} != local shard {tuple(local.shape)}")
            local.copy_(block.to(local.dtype))
