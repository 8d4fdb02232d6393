"""Lightning end-to-end worker for tests/scale/test_lightning_strategy.py (a script: Lightning re-launches it once
per extra device with LOCAL_RANK set).

    python lightning_worker.py RUN_DIR MAX_STEPS [RESUME_CKPT]

Trains the tiny SFTModule with NorthParallelStrategy (FSDP2 + EP=2 + activation checkpointing, bf16 params) on
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

from north_lightning.model.parallelize import NorthParallelStrategy
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
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def main() -> None:
    run_dir, max_steps = Path(sys.argv[1]), int(sys.argv[2])
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = SFTModule(model="tiny", config_overrides={"num_hidden_layers": 3, "experts_backend": "grouped"},
                       warmup_steps=1)
    recorder = LossRecorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_steps=max_steps, precision="32-true",
        strategy=NorthParallelStrategy(expert_parallel_size=2, activation_checkpointing=True,
                                       param_dtype="bfloat16"),
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
        (run_dir / name).write_text(json.dumps({"losses": recorder.losses, "global_step": trainer.global_step}))


if __name__ == "__main__":
    main()
