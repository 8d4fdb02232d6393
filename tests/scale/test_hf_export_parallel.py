"""HFExport of a sharded model (FSDP2 + EP=2 over 2 gloo processes under a real Lightning Trainer): the periodic
and final exports equal a 1-process export of the same weights (tensor by tensor, plus config, index and tokenizer
files), and both ranks finish (a rank missing from a collective gather would hang the other one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import safetensors_in
from north_lightning.assets import tiny_tokenizer_path
from north_lightning.model import NorthConfig, NorthForCausalLM

WORKER = Path(__file__).with_name("hf_export_worker.py")
TIMEOUT_S = 240


def test_sharded_hf_export_equals_one_process_export(tmp_path: Path) -> None:
    cfg = NorthConfig.preset("tiny", num_hidden_layers=2, experts_backend="grouped")
    torch.manual_seed(7)
    reference = tmp_path / "init_hf"  # the 1-process export; the 2-process run starts from these weights
    NorthForCausalLM(cfg).save_pretrained(reference, tokenizer_dir=tiny_tokenizer_path())
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(WORKER), str(run_dir), str(reference), str(tiny_tokenizer_path())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's whole process group: both ranks
        proc.communicate()
        pytest.fail(f"2-process HF export did not finish in {TIMEOUT_S} s (a rank hung); finished ranks: "
                    f"{sorted(p.name for p in run_dir.glob('done_rank*'))}")
    assert proc.returncode == 0, stderr[-4000:]
    for rank in (0, 1):  # both ranks returned from fit (past the final export's collectives and barrier)
        done = json.loads((run_dir / f"done_rank{rank}.json").read_text())
        assert done["global_step"] == 1 and done["last_export"] == str(run_dir / "hf")
        assert done["sharded"] == "DTensor"

    ref_tensors = safetensors_in(reference)
    assert len(ref_tensors) > 10 and "model.layers.1.mlp.experts.15.down_proj.weight" in ref_tensors
    for exported in (run_dir / "hf" / "step_1", run_dir / "hf"):
        got = safetensors_in(exported)
        assert got.keys() == ref_tensors.keys(), exported
        for name, want in ref_tensors.items():
            assert got[name].dtype == want.dtype and torch.equal(got[name], want), f"{exported}: {name}"
        for file in ("config.json", "model.safetensors.index.json", "tokenizer.json"):
            assert (exported / file).read_bytes() == (reference / file).read_bytes(), f"{exported}/{file}"
