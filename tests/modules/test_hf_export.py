"""HFExport callback: periodic and final exports with the datamodule's tokenizer, weights identical."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from north_lightning.assets import ASSETS_DIR, tiny_tokenizer_path
from north_lightning.callbacks import HFExport
from north_lightning.datamodules.jsonl import JsonlChatDataModule
from north_lightning.model import NorthForCausalLM
from north_lightning.modules import SFTModule

SMALL = {"preset": "tiny", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2,
         "expert_intermediate_size": 32, "dense_intermediate_size": 64}


def test_exports_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = SFTModule(SMALL)
    dm = JsonlChatDataModule(str(ASSETS_DIR / "demo_chat.jsonl"), seq_len=320, batch_size=1)
    export = HFExport(dirpath=str(tmp_path / "hf"), every_n_steps=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[export])
    trainer.fit(module, dm)
    assert sorted(p.name for p in (tmp_path / "hf").glob("step_*")) == ["step_2", "step_4"]
    final = tmp_path / "hf"
    assert export.last_export == final
    assert (final / "tokenizer.json").read_bytes() == (tiny_tokenizer_path() / "tokenizer.json").read_bytes()
    reloaded = NorthForCausalLM.from_pretrained(final)
    for (name, a), (_, b) in zip(module.model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    step2 = NorthForCausalLM.from_pretrained(final / "step_2")
    assert not torch.equal(step2.model.norm.weight, reloaded.model.norm.weight)  # an earlier state of training
