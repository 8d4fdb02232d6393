"""`python -m north_lightning fit ...`: config merging, interpolation, errors naming the key, a real tiny fit."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from north_lightning.cli.lightning_cli import run_lightning_cli

REPO = Path(__file__).resolve().parents[2]
TINY_SFT = str(REPO / "configs" / "tiny" / "sft.yaml")
SMALL_MODEL = {"preset": "tiny", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
               "num_key_value_heads": 1, "head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2,
               "expert_intermediate_size": 32, "dense_intermediate_size": 64}


def _print_config(capsys: pytest.CaptureFixture, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", TINY_SFT, *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _error(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", TINY_SFT, *args])
    assert exit_info.value.code not in (0, None)
    return capsys.readouterr().err


def test_configs_merge_and_interpolation_follows_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"trainer": {"default_root_dir": str(tmp_path / "run"), "max_steps": 7},
                                        "model": {"init_args": {"lr": 5.0e-4}}}))
    cfg = _print_config(capsys, "--config", str(override))
    trainer = cfg["trainer"]
    assert trainer["max_steps"] == 7 and cfg["model"]["init_args"]["lr"] == 5.0e-4
    assert cfg["model"]["init_args"]["warmup_steps"] == 10  # kept from the first file
    # ${trainer.default_root_dir} resolves on the merged config, so the second file moves every path.
    assert trainer["logger"]["init_args"]["save_dir"] == str(tmp_path / "run")
    dirpaths = [c["init_args"]["dirpath"] for c in trainer["callbacks"]]
    assert dirpaths == [str(tmp_path / "run" / "checkpoints"), str(tmp_path / "run" / "hf")]
    # ... and so does a command-line override given after the files.
    cfg = _print_config(capsys, "--trainer.default_root_dir", "elsewhere")
    assert cfg["trainer"]["callbacks"][1]["init_args"]["dirpath"] == "elsewhere/hf"


def test_unknown_key_and_wrong_type_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"init_args": {"learning_rat": 1.0}}}))
    assert "learning_rat" in _error(capsys, "--config", str(bad))
    assert "max_stepz" in _error(capsys, "--trainer.max_stepz", "3")
    err = _error(capsys, "--model.init_args.warmup_steps", "ten")
    assert "warmup_steps" in err and "ten" in err
    err = _error(capsys, "--data.init_args.seq_len", "[1, 2]")
    assert "seq_len" in err


def test_callbacks_and_logger_swappable_by_class_path(capsys: pytest.CaptureFixture) -> None:
    cfg = _print_config(capsys, "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
                        "--trainer.logger.save_dir", "tb", "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor")
    assert cfg["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger"
    assert cfg["trainer"]["callbacks"][-1]["class_path"] == "lightning.pytorch.callbacks.LearningRateMonitor"


@pytest.mark.slow
def test_fit_subprocess_trains_logs_and_exports(tmp_path: Path) -> None:
    """`python -m north_lightning fit` end to end: CSV metrics, checkpoint, HF export loadable by transformers."""
    override = tmp_path / "small.yaml"
    override.write_text(yaml.safe_dump({
        "trainer": {"default_root_dir": str(tmp_path / "run"), "max_steps": 4, "log_every_n_steps": 1,
                    "enable_progress_bar": False},
        "model": {"init_args": {"model": SMALL_MODEL, "warmup_steps": 2}},
        "data": {"init_args": {"seq_len": 320, "batch_size": 1}},
    }))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "north_lightning", "fit", "--config", TINY_SFT, "--config",
                           str(override)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    hf = run / "hf"
    assert f"HF export written to {hf}" in proc.stdout
    metrics = list(csv.DictReader(open(next((run / "logs").glob("version_*/metrics.csv")))))
    logged = {k for row in metrics for k, v in row.items() if v}
    assert {"train/loss", "train/lr", "train/tokens_per_s", "moe/aux_loss", "moe/expert_load_cv", "step"} <= logged
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "logs" / "version_0" / "config.yaml").is_file() or list(run.glob("**/config.yaml"))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    hf_model = AutoModelForCausalLM.from_pretrained(hf)
    assert type(hf_model).__name__ == "Cohere2MoeForCausalLM" and len(tok) <= hf_model.config.vocab_size
