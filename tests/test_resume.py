"""Exact resume: a tiny SFT run SIGKILLed between checkpoints and resumed from `last` logs, for every later
step, the same loss as an uninterrupted run (same seed, CPU), bit for bit.

What must be in the checkpoint for this to hold: weights, AdamW moments, LR-scheduler position, loop counters,
the data position (the datamodule's `consumed_batches`, counted when a batch reaches the training step, so
prefetching does not shift it) and RNG states. Gradient accumulation (2 micro-batches per step) is on, so the
resumed data stream must also stay aligned with accumulation windows.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_SFT = str(REPO / "configs" / "tiny" / "sft.yaml")
TINY_STAGE1 = str(REPO / "configs" / "tiny" / "sft_stage1.yaml")
MAX_STEPS, EVERY, KILL_AT = 12, 4, 9


class KillAt(L.Callback):
    """Kills its own process with SIGKILL (no cleanup, no final checkpoint) when optimizer step `step` begins:
    after the checkpoint of step 8, with step 9 trained but not checkpointed."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _data_args(config: str, root: Path) -> dict:
    if config == TINY_SFT:
        return {"seq_len": 320, "batch_size": 1, "seed": 3}
    # the cascade's datamodule on prepared shards (made by fit's prepare_data), streamed by two dataloader
    # workers; single-turn components of the stage-1 data keep the rows as short as the chat run's
    chat = "asset://sft_data/toy_chat_train.jsonl"
    mixture = {"name": "resume_chat", "components": [
        {"name": "code", "paths": [chat], "harness": "chat", "share": 0.6, "source": "toy_code"},
        {"name": "reasoning", "paths": [chat], "harness": "chat", "share": 0.4, "source": "toy_reasoning"}]}
    return {"mixture": mixture, "seq_len": 320, "batch_size": 1, "seed": 3, "max_records_per_component": 40,
            "max_open_rows": 4, "num_workers": 2, "data_dir": str(root.parent / "prepared"), "report_path": None}


def _fit(root: Path, *extra: str, config: str = TINY_SFT) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    override = root / "resume.yaml"
    override.write_text(yaml.safe_dump({
        "trainer": {"default_root_dir": str(root), "max_steps": MAX_STEPS, "log_every_n_steps": 1,
                    "accumulate_grad_batches": 2, "enable_progress_bar": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "checkpoints"), "every_n_train_steps": EVERY,
                                                 "save_last": True, "save_top_k": -1}}]},
        "model": {"init_args": {"warmup_steps": 3, "lr": 3.0e-3, "model": {
            "preset": "tiny", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2,
            "expert_intermediate_size": 32, "dense_intermediate_size": 64}}},
        "data": {"init_args": _data_args(config, root)},
    }))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.run([sys.executable, "-m", "north_lightning", "fit", "--config", config, "--config",
                           str(override), *extra], cwd=REPO, capture_output=True, text=True, timeout=400, env=env)


def _losses(root: Path) -> dict[int, str]:
    """step -> train/loss as written by CSVLogger (repr of the float: exact) over every logger version."""
    out: dict[int, str] = {}
    for path in sorted((root / "logs").glob("version_*/metrics.csv")):
        for row in csv.DictReader(open(path)):
            if row.get("train/loss"):
                out[int(row["step"])] = row["train/loss"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config", [TINY_SFT, TINY_STAGE1], ids=["jsonl_chat", "prepared_shards"])
def test_sigkill_then_resume_from_last_is_exact(tmp_path: Path, config: str) -> None:
    straight = _fit(tmp_path / "straight", config=config)
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = _losses(tmp_path / "straight")
    assert sorted(reference) == list(range(MAX_STEPS))

    run = tmp_path / "killed"
    killed = _fit(run, "--trainer.callbacks+=test_resume.KillAt", "--trainer.callbacks.init_args.step", str(KILL_AT),
                  config=config)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["epoch=0-step=4.ckpt", "epoch=0-step=8.ckpt", "last.ckpt"]

    resumed = _fit(run, "--ckpt_path", "last", config=config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _losses(run)
    later = list(range(2 * EVERY, MAX_STEPS))  # steps 8..11 (0-based) ran again after the resume
    assert all(s in after for s in later)
    assert [after[s] for s in later] == [reference[s] for s in later]
    # The reference run keeps learning over these steps, so equal losses are not a constant by accident.
    assert len(set(reference[s] for s in later)) == len(later)
