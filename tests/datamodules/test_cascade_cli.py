"""The tiny cascade through LightningCLI and the real SFTModule: stage 1 trains and exports, stage 2 starts
from that export, and refuses to start without it."""

from __future__ import annotations

import pytest
import torch

from north_lightning.cli.lightning_cli import run_lightning_cli

QUICK = ["--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--data.init_args.seq_len", "1536", "--data.init_args.max_records_per_component", "3",
         "--data.init_args.max_open_rows", "4"]


@pytest.mark.slow
def test_tiny_cascade_stage1_then_stage2(tmp_path):
    torch.set_num_threads(2)
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    quick = [*QUICK, "--data.init_args.data_dir", str(tmp_path / "prepared")]
    run_lightning_cli(["fit", "--config", "configs/tiny/sft_stage1.yaml", "--trainer.default_root_dir", str(s1),
                       "--data.init_args.batch_size", "1", *quick])
    assert (s1 / "hf" / "config.json").is_file() and list((s1 / "hf").glob("*.safetensors"))
    assert (s1 / "data_report.json").is_file()
    with pytest.raises(FileNotFoundError, match="allow_missing_init"):
        from north_lightning.datamodules.sft import SFTDataModule

        SFTDataModule("configs/tiny/mixtures/sft_stage2.yaml", init_from=str(tmp_path / "missing"))
    run_lightning_cli(["fit", "--config", "configs/tiny/sft_stage2.yaml", "--trainer.default_root_dir", str(s2),
                       "--model.init_args.init_from", str(s1 / "hf"), "--data.init_args.init_from", str(s1 / "hf"),
                       *quick])
    assert len(list((tmp_path / "prepared").glob("tiny_sft_stage*-*/index.json"))) == 2  # fit prepared each stage
    assert (s2 / "hf" / "config.json").is_file()
