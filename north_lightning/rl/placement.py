"""Where the RL sampler runs relative to the trainer, as the sampler callback's `placement` argument.

Read by `plan` (per-GPU memory of both sides, refusing what cannot fit: `cli/plan_rl.py`) and by `slurm` (the
sampler nodes' `vllm serve` flags), and checked by `VLLMSidecar.setup` on a GPU trainer. Plain data, no vLLM.

- Disaggregated (`sampler_nodes` > 0): the trainer keeps its nodes; each sampler node runs one `vllm serve` over
  its `gpus_per_node` GPUs, `tensor_parallel_size` GPUs per model replica and `gpus_per_node /
  tensor_parallel_size` data-parallel replicas, with expert parallelism across all of them when `expert_parallel`.
- Colocated (`sampler_nodes` = 0): the engine shares the trainer's GPUs. Its weights and KV cache stay resident
  while the trainer steps unless `sleep_wake` (vLLM's sleep mode, GPU only: the CPU worker's `sleep()` does nothing)
  releases them for the step; the planner accounts for both phases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class RLPlacement:
    """See the module docstring. `kv_cache_gib` is per GPU (vLLM's `--kv-cache-memory-bytes`); `export_bucket_mb`
    bounds the full tensors one export moves at a time (the trainer's sending rank holds at most two buckets, a
    sampler GPU receives one)."""

    sampler_nodes: int = 0
    gpus_per_node: int = 8
    tensor_parallel_size: int = 8
    expert_parallel: bool = False
    max_model_len: int = 131072
    kv_cache_gib: float = 40.0
    export_bucket_mb: int = 1024
    sleep_wake: bool = False
    gpu_gib: float = 80.0

    def __post_init__(self) -> None:
        problems = []
        if self.sampler_nodes < 0:
            problems.append(f"sampler_nodes={self.sampler_nodes} must be >= 0")
        if self.gpus_per_node < 1 or self.tensor_parallel_size < 1:
            problems.append("gpus_per_node and tensor_parallel_size must be >= 1")
        elif self.gpus_per_node % self.tensor_parallel_size:
            problems.append(f"tensor_parallel_size={self.tensor_parallel_size} must divide gpus_per_node="
                            f"{self.gpus_per_node} (one vllm serve per node, data-parallel replicas inside it)")
        if self.max_model_len < 1 or self.kv_cache_gib <= 0 or self.export_bucket_mb < 1 or self.gpu_gib <= 0:
            problems.append("max_model_len, kv_cache_gib, export_bucket_mb and gpu_gib must be > 0")
        if problems:
            raise ValueError("placement: " + "; ".join(problems))

    @property
    def colocated(self) -> bool:
        return self.sampler_nodes == 0

    @property
    def data_parallel_size(self) -> int:
        return self.gpus_per_node // self.tensor_parallel_size

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RLPlacement | None:
        if data is None:
            return None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"placement: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
