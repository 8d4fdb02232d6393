"""Lightning end-to-end worker for tests/scale/test_lightning_strategy.py (a script: Lightning re-launches it once
per extra device with LOCAL_RANK set).

    python lightning_worker.py RUN_DIR MAX_STEPS INIT_HF_DIR [RESUME_CKPT]

Trains the tiny SFTModule with NorthParallelStrategy (FSDP2 + EP=2 + activation checkpointing, bf16 params, weights
read shard by shard from INIT_HF_DIR into a meta-built model) on
2 CPU processes, saving a sharded checkpoint folder every step; rank 0 writes the logged losses to
RUN_DIR/losses_<MAX_STEPS>[_resumed].json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from north_lightning.modules.strategy import NorthParallelStrategy
from north_lightning.modules.sft import SFTModule

ROWS_PER_RANK, SEQ = 1, 32


class RankBatches(Dataset):
    """Packed batches for one rank: different rows per rank (every rank is data-parallel), the same rows at every
    step, so a resumed run sees exactly the batches the uninterrupted run saw."""

    def __init__(self, rank: int, steps: int) -> None:
        self.rank, self.steps = rank, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(1000 + self.rank)
        ids = torch.randint(3, 4096, (ROWS_PER_RANK, SEQ), generator=gen)
        targets = torch.full_like(ids, -100)
        targets[:, :-1] = ids[:, 1:]
        return {"input_ids": ids, "targets": targets, "document_ids": torch.zeros_like(ids)}


class LossRecorder(L.Callback):
    """Logged losses, and how far the weights at the first step are from the HF directory the run started from."""

    def __init__(self, init_hf: str) -> None:
        self.losses: list[float] = []
        self.init_hf, self.init_max_abs_diff = init_hf, None

    def on_train_start(self, trainer, pl_module) -> None:
        from north_lightning.model import NorthForCausalLM
        from north_lightning.model.gather import full_state_dict

        state = full_state_dict(pl_module.model)  # collective; filled on rank 0
        if trainer.global_rank == 0:
            ref = NorthForCausalLM.from_pretrained(self.init_hf).state_dict()
            self.init_max_abs_diff = max(float((state[k] - ref[k]).abs().max()) for k in ref)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def main() -> None:
    run_dir, max_steps, init_hf = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    resume = sys.argv[4] if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = SFTModule(model="tiny", config_overrides={"num_hidden_layers": 3, "experts_backend": "grouped"},
                       warmup_steps=1)
    recorder = LossRecorder(init_hf)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_steps=max_steps, precision="32-true",
        strategy=NorthParallelStrategy(expert_parallel_size=2, activation_checkpointing=True,
                                       param_dtype="bfloat16", init_from_hf=init_hf),
        default_root_dir=run_dir, logger=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0,
        callbacks=[recorder, L.pytorch.callbacks.ModelCheckpoint(
            dirpath=run_dir / "checkpoints", save_last=True, save_top_k=-1, every_n_train_steps=1)],
    )
    rank = int(os.environ.get("LOCAL_RANK", 0))
    loader = DataLoader(RankBatches(rank, 16), batch_size=None, shuffle=False)
    trainer.fit(module, loader, ckpt_path=resume)
    if trainer.global_rank == 0:
        name = f"losses_{max_steps}{'_resumed' if resume else ''}.json"
        (run_dir / name).write_text(json.dumps({"losses": recorder.losses, "global_step": trainer.global_step,
                                                "init_max_abs_diff": recorder.init_max_abs_diff}))


if __name__ == "__main__":
    main()
