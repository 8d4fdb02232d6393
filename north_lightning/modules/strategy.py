"""`NorthParallelStrategy`: Lightning's `ModelParallelStrategy` for North.

No tensor-parallel dim (every rank is a data-parallel rank, as expert parallelism needs); after the
LightningModule's `configure_model` it calls `model/parallelize.py: parallelize_north` (FSDP2 + EP +
activation checkpointing) on the module's `model`. The parallelism itself is plain torch and lives in the
model package; only the Lightning glue is here.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from north_lightning.model.parallelize import dtype_from_name, parallelize_north
from north_lightning.model.safe_load import safe_checkpoint_globals
from north_lightning.model.transformer import NorthForCausalLM


class NorthParallelStrategy(ModelParallelStrategy):
    """Lightning `ModelParallelStrategy` for North: FSDP2 over all ranks, optional expert parallelism.

    YAML: `trainer.strategy: {class_path: north_lightning.modules.strategy.NorthParallelStrategy,
    init_args: {expert_parallel_size: 8}}` with `trainer.precision: 32-true` (the mixed-precision policy here
    already computes in bf16 and keeps fp32 master weights).

    `init_from_hf`: an HF directory to start from *without* any process reading the whole checkpoint: the
    LightningModule's `configure_model()` then runs on the meta device (give it the matching preset, no
    `init_from`), the model is sharded, materialised empty on the GPU, and each rank reads only its slices
    (`sharded_load.load_hf_sharded`). A resumed run restores its checkpoint over these weights as usual.
    """

    def __init__(self, expert_parallel_size: int = 1, activation_checkpointing: bool = True,
                 param_dtype: str | None = "bfloat16", reduce_dtype: str | None = "float32",
                 cpu_offload: bool = False, init_from_hf: str | None = None,
                 save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.init_from_hf = init_from_hf
        if cpu_offload and expert_parallel_size > 1:
            raise ValueError("NorthParallelStrategy: cpu_offload needs expert_parallel_size=1 (EP weights stay on GPU)")
        self.cpu_offload = cpu_offload
        self.expert_parallel_size = expert_parallel_size
        self.activation_checkpointing = activation_checkpointing
        self.param_dtype, self.reduce_dtype = dtype_from_name(param_dtype), dtype_from_name(reduce_dtype)

    def setup_environment(self) -> None:
        # Lightning's default mesh is nodes x GPUs = data x tensor parallel; North uses no TP, so every rank is
        # a data-parallel rank (each reads different batches; EP exchanges tokens between them).
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def setup(self, trainer: Any) -> None:
        model = getattr(self.lightning_module, "model", None)
        if not isinstance(model, NorthForCausalLM):
            raise TypeError("NorthParallelStrategy: the LightningModule must build a NorthForCausalLM as "
                            "`self.model` in configure_model()")
        if not getattr(model, "_north_parallelized", False):
            if self.init_from_hf and not any(p.is_meta for p in model.parameters()):
                raise ValueError("NorthParallelStrategy(init_from_hf=...): configure_model() built real weights; "
                                 "drop the module's init_from so it builds on the meta device")
            # no model.to(device) first: fully_shard moves one layer at a time (a 30B model never fits whole)
            parallelize_north(model, mesh=self.device_mesh["data_parallel"], ep=self.expert_parallel_size,
                              activation_checkpointing=self.activation_checkpointing,
                              param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype,
                              cpu_offload=self.cpu_offload)
            if self.init_from_hf:
                from north_lightning.model.sharded_load import load_hf_sharded

                model.to_empty(device="cpu" if self.cpu_offload else self.root_device)
                load_hf_sharded(model, self.init_from_hf)
            model._north_parallelized = True
        super().setup(trainer)

    @contextmanager
    def tensor_init_context(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        # with init_from_hf the weights come from the checkpoint after sharding: build on meta (no memory)
        with super().tensor_init_context(empty_init=True if self.init_from_hf else empty_init):
            yield

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        # Restricted unpickler with our allow-list (numpy RNG states), whatever the caller asked: write access
        # to a run directory must not be code execution in the trainer. (torch's own DCP shard metadata,
        # `.metadata`, is still a plain pickle: see the README's security section.)
        with safe_checkpoint_globals():
            return super().load_checkpoint(checkpoint_path, weights_only=True)
