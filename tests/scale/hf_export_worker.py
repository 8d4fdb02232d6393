"""2-process worker for tests/scale/test_hf_export_parallel.py (a script: Lightning re-launches it once per extra
device with LOCAL_RANK set).

    python hf_export_worker.py RUN_DIR INIT_HF_DIR TOKENIZER_DIR

The tiny SFTModule (2 layers) under NorthParallelStrategy (FSDP2 + EP=2, bf16 compute, fp32 master shards) on 2 CPU
processes (gloo), weights read shard by shard from INIT_HF_DIR, one optimizer step with lr=0 (AdamW then leaves
every weight bit-identical, so the export must reproduce INIT_HF_DIR exactly), and `HFExport(every_n_steps=1)`:
a periodic export after the step and the final one at train end, both collective. Each rank writes
RUN_DIR/done_rank<R>.json once `fit` has returned, so the test can tell a finished rank from a hung one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from north_lightning.callbacks import HFExport
from north_lightning.modules.strategy import NorthParallelStrategy
from north_lightning.modules.sft import SFTModule

SEQ = 32
OVERRIDES = {"num_hidden_layers": 2, "experts_backend": "grouped"}


class OneBatch(Dataset):
    """One packed row per rank (different tokens on each rank)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __len__(self) -> int:
        return 1

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(3, 4096, (1, SEQ), generator=torch.Generator().manual_seed(100 + self.rank))
        targets = torch.full_like(ids, -100)
        targets[:, :-1] = ids[:, 1:]
        return {"input_ids": ids, "targets": targets, "document_ids": torch.zeros_like(ids)}


def main() -> None:
    run_dir, init_hf, tokenizer = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = SFTModule(model="tiny", config_overrides=OVERRIDES, lr=0.0, warmup_steps=1)
    export = HFExport(dirpath=str(run_dir / "hf"), tokenizer=tokenizer, every_n_steps=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_steps=1, precision="32-true",
        strategy=NorthParallelStrategy(expert_parallel_size=2, activation_checkpointing=False,
                                       param_dtype="bfloat16", init_from_hf=init_hf),
        default_root_dir=run_dir, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0, callbacks=[export],
    )
    rank = int(os.environ.get("LOCAL_RANK", 0))
    trainer.fit(module, DataLoader(OneBatch(rank), batch_size=None, shuffle=False))
    (run_dir / f"done_rank{trainer.global_rank}.json").write_text(json.dumps({
        "global_step": trainer.global_step, "last_export": str(export.last_export),
        "sharded": type(next(module.model.parameters())).__name__}))


if __name__ == "__main__":
    main()
