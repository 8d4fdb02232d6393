"""Scale-out of `NorthForCausalLM`: FSDP2 over a device mesh + expert parallelism + activation checkpointing.

`parallelize_north(model, ep=..., ...)` applies, in order (the torchtitan recipe):
1. expert parallelism (`ep` > 1): every MoE block's experts become `ExpertParallelExperts` (see
   expert_parallel.py: E/ep experts per rank, token all-to-all, dim-1 sharding over the other ranks);
2. per-block activation checkpointing: each decoder layer keeps only its input and recomputes the rest in
   backward (non-reentrant `torch.utils.checkpoint`; parameter names are unchanged, unlike checkpoint_wrapper);
3. FSDP2 `fully_shard` per decoder layer and then on the root (embedding + tied head + final norm), with a
   `MixedPrecisionPolicy`: bf16 all-gathered parameters for compute, fp32 gradient reduction, fp32 sharded
   master weights for the optimizer. Expert DTensors are `ignored_params` (EP handles them).
`token_logprobs` / `hidden_states` are registered as FSDP forward methods, because training calls them rather
than `forward`.

Lightning's side (`modules/strategy.py: NorthParallelStrategy`) calls `parallelize_north`; this module stays
plain torch. Sharded (distributed) checkpoints convert to the HF layout with `export_hf` (from a live sharded
model, streamed bucket by bucket through `model/gather.py`, the one full-weight gather the sampler export uses
too) or `distributed_checkpoint_to_hf` (offline, from a Lightning checkpoint folder).

On the CPU (gloo) everything here runs, including FSDP2 with bf16 parameters; tests use 2 processes.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.fsdp import (CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard,
                                    register_fsdp_forward_method)
from torch.utils.checkpoint import checkpoint

from north_lightning.model.config import NorthConfig
from north_lightning.model.expert_parallel import ExpertParallelExperts
from north_lightning.model.moe import MoEBlock
from north_lightning.model.safe_load import load_checkpoint_file
from north_lightning.model.transformer import NorthForCausalLM

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
           "float16": torch.float16, None: None}


def dtype_from_name(name: str | torch.dtype | None) -> torch.dtype | None:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {[k for k in _DTYPES if k]}")
    return _DTYPES[name]


def _device_of(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


def apply_expert_parallel(model: NorthForCausalLM, ep: int, device_type: str,
                          master_dtype: torch.dtype | None = torch.float32) -> DeviceMesh:
    """Replace every MoE block's experts by their expert-parallel shard over a ("dp_mod_ep", "ep") mesh."""
    world = dist.get_world_size()
    if world % ep:
        raise ValueError(f"expert_parallel_size={ep} must divide the world size {world}")
    mesh = init_device_mesh(device_type, (world // ep, ep), mesh_dim_names=("dp_mod_ep", "ep"))
    for block in model.modules():
        if isinstance(block, MoEBlock):
            block.experts = ExpertParallelExperts(block.experts, mesh, model.config.experts_backend, world,
                                                  _device_of(mesh), dtype=master_dtype)
    return mesh


def apply_activation_checkpointing(model: NorthForCausalLM) -> None:
    """Each decoder layer saves only its inputs; everything inside is recomputed in backward."""
    for layer in model.model.layers:
        if getattr(layer, "_north_checkpointed", False):
            continue
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
        layer._north_checkpointed = True


def _upcast(module: nn.Module, dtype: torch.dtype | None) -> None:
    """fp32 master weights for the optimizer whatever dtype the checkpoint was loaded in; called module by
    module just before sharding, so at most one layer is ever up-cast whole. Sharded (DTensor) and meta
    parameters are left alone."""
    for p in module.parameters():
        if dtype is not None and not isinstance(p, DTensor) and not p.is_meta and p.is_floating_point() \
                and p.dtype != dtype:
            p.data = p.data.to(dtype)


def apply_fsdp(model: NorthForCausalLM, mesh: DeviceMesh, param_dtype: torch.dtype | None,
               reduce_dtype: torch.dtype | None, reshard_after_forward: bool = True, cpu_offload: bool = False,
               master_dtype: torch.dtype | None = torch.float32) -> None:
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    ignored = {p for m in model.modules() if isinstance(m, ExpertParallelExperts) for p in m.parameters()}
    if cpu_offload and ignored:
        raise ValueError("cpu_offload needs expert_parallel_size=1: expert-parallel weights are not FSDP-managed")
    offload = CPUOffloadPolicy(pin_memory=True) if cpu_offload else OffloadPolicy()
    for layer in model.model.layers:
        _upcast(layer, master_dtype)
        layer_ignored = {p for p in layer.parameters() if p in ignored}
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward,
                    offload_policy=offload, ignored_params=layer_ignored or None)
    _upcast(model, master_dtype)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload, ignored_params=ignored or None)
    for method in ("hidden_states", "token_logprobs"):
        register_fsdp_forward_method(model, method)


def parallelize_north(model: NorthForCausalLM, *, mesh: DeviceMesh | None = None, ep: int = 1,
                      activation_checkpointing: bool = True, param_dtype: str | torch.dtype | None = "bfloat16",
                      reduce_dtype: str | torch.dtype | None = "float32", cpu_offload: bool = False,
                      master_dtype: str | torch.dtype | None = "float32") -> NorthForCausalLM:
    """Shard `model` in place over `mesh` (default: 1-D over the whole world on the model's device type).
    `cpu_offload` keeps sharded params, grads and optimizer state in (pinned) host memory (FSDP2
    CPUOffloadPolicy; the optimizer step then runs on the CPU): 30B-A3B at 64K on one 8-GPU node, see `plan`."""
    if not dist.is_initialized():
        raise RuntimeError("parallelize_north needs torch.distributed initialised (Lightning, torchrun or spawn)")
    if mesh is None:
        device_type = next(model.parameters()).device.type
        if device_type == "meta":  # built on meta (then `to_empty` + `load_hf_sharded`): shard for the real device
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        mesh = init_device_mesh(device_type, (dist.get_world_size(),), mesh_dim_names=("dp",))
    if ep > 1:
        apply_expert_parallel(model, ep, mesh.device_type, dtype_from_name(master_dtype))
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    apply_fsdp(model, mesh, dtype_from_name(param_dtype), dtype_from_name(reduce_dtype), cpu_offload=cpu_offload,
               master_dtype=dtype_from_name(master_dtype))
    return model


# ---- HF export of sharded models and checkpoints ---------------------------------------------------------
def export_hf(model: NorthForCausalLM, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
              bucket_bytes: int = 1 << 30, dtype: torch.dtype | None = torch.float32) -> None:
    """Write a sharded model as an HF directory, streamed bucket by bucket by rank 0 (`model/gather.py`: no rank
    holds more than its shard plus two buckets of full tensors); collective."""
    from north_lightning.model.gather import write_hf_streaming

    largest = max(t.numel() * (torch.empty((), dtype=dtype).element_size() if dtype and t.is_floating_point()
                               else t.element_size()) for t in model.state_dict().values())
    write_hf_streaming(model, model.config, out_dir, bucket_bytes=max(bucket_bytes, largest), dtype=dtype,
                       tokenizer_dir=tokenizer_dir)
    dist.barrier()


def distributed_checkpoint_to_hf(ckpt_dir: str | Path, out_dir: str | Path, config: NorthConfig,
                                 prefix: str = "model.", tokenizer_dir: str | Path | None = None) -> None:
    """Offline: a Lightning ModelParallelStrategy checkpoint folder (DCP shards) -> HF directory, no GPU and no
    process group needed. `prefix` is the LightningModule attribute holding the network."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(ckpt_dir), f"{tmp}/full.pt")
        checkpoint = load_checkpoint_file(f"{tmp}/full.pt")
    module_state = checkpoint.get("state_dict", checkpoint)
    state = {k[len(prefix):]: v for k, v in module_state.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{ckpt_dir}: no state-dict keys start with {prefix!r} (keys: {list(module_state)[:5]})")
    plain = NorthForCausalLM(config)
    plain.load_state_dict({k: v.float() for k, v in state.items()})
    plain.save_pretrained(out_dir, tokenizer_dir=tokenizer_dir)
