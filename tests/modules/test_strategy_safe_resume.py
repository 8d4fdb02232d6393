"""Resuming under NorthParallelStrategy reads the checkpoint with the restricted unpickler: a pickle planted in a
sharded checkpoint's `meta.pt` is refused, never run, while the run's own checkpoint resumes (tests/scale covers
the two-rank resume being exact)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import CodeRunningPickle
from north_lightning.model.safe_load import load_checkpoint_file

WORKER = Path(__file__).with_name("strategy_resume_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _fit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_a_pickle_planted_in_a_sharded_checkpoint_is_not_run(tmp_path: Path) -> None:
    first = _fit(str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = tmp_path / "a" / "checkpoints" / "epoch=0-step=1.ckpt"
    meta = load_checkpoint_file(ckpt / "meta.pt")  # our own metadata loads with the allow-list
    marker = tmp_path / "pwned"
    torch.save({**meta, "loops": CodeRunningPickle(marker)}, ckpt / "meta.pt")
    resumed = _fit(str(tmp_path / "b"), str(ckpt))
    assert not marker.exists(), "resuming ran code from the checkpoint"
    assert resumed.returncode != 0 and "Weights only load failed" in resumed.stderr, resumed.stderr[-3000:]
