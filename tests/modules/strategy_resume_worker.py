"""Fit the tiny SFTModule one step under NorthParallelStrategy on one CPU process (a sharded checkpoint folder),
or resume from CKPT, for tests/modules/test_strategy_safe_resume.py:  python strategy_resume_worker.py RUN_DIR [CKPT]."""
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from north_lightning.modules.sft import SFTModule
from north_lightning.modules.strategy import NorthParallelStrategy


class Batches(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        ids = torch.randint(3, 4096, (1, 16), generator=torch.Generator().manual_seed(i))
        targets = torch.full_like(ids, -100)
        targets[:, :-1] = ids[:, 1:]
        return {"input_ids": ids, "targets": targets, "document_ids": torch.zeros_like(ids)}


run_dir, ckpt = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
torch.set_num_threads(1)
module = SFTModule(model="tiny", config_overrides={"num_hidden_layers": 2, "experts_backend": "grouped"}, warmup_steps=1)
trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2 if ckpt else 1, precision="32-true",
                    strategy=NorthParallelStrategy(activation_checkpointing=False), default_root_dir=run_dir,
                    logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    use_distributed_sampler=False)
trainer.fit(module, DataLoader(Batches(), batch_size=None), ckpt_path=ckpt)
print("fit done", trainer.global_step)
