"""NorthParallelStrategy under a real Lightning Trainer: 2 CPU processes (gloo), SFTModule, FSDP2 + EP=2 +
activation checkpointing with bf16 parameters, weights loaded shard by shard from an HF directory
(`init_from_hf`, the model built on meta); sharded checkpoints every step; a run resumed from the step-1
checkpoint reproduces the uninterrupted run's later losses and final weights exactly (CPU is deterministic),
and the sharded checkpoint converts to an HF directory that `NorthForCausalLM.from_pretrained` loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.model.parallelize import distributed_checkpoint_to_hf

WORKER = Path(__file__).with_name("lightning_worker.py")


def _fit(run_dir: Path, max_steps: int, init_hf: Path, resume: Path | None = None) -> dict:
    argv = [sys.executable, str(WORKER), str(run_dir), str(max_steps), str(init_hf)] + ([str(resume)] if resume else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    name = f"losses_{max_steps}{'_resumed' if resume else ''}.json"
    return json.loads((run_dir / name).read_text())


@pytest.mark.slow
def test_sharded_checkpoint_resume_and_hf_conversion(tmp_path: Path) -> None:
    cfg = NorthConfig.preset("tiny", num_hidden_layers=3, experts_backend="grouped")
    torch.manual_seed(123)
    NorthForCausalLM(cfg).save_pretrained(tmp_path / "init_hf")  # the run starts from these weights
    straight = _fit(tmp_path / "a", 3, tmp_path / "init_hf")
    assert straight["init_max_abs_diff"] == 0.0  # read shard by shard into the meta-built, sharded model
    assert straight["global_step"] == 3 and len(straight["losses"]) == 3
    assert straight["losses"][-1] < straight["losses"][0]
    step1 = tmp_path / "a" / "checkpoints" / "epoch=0-step=1.ckpt"
    # one shard per rank
    assert sorted(p.name for p in step1.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]

    resumed = _fit(tmp_path / "b", 3, tmp_path / "init_hf", resume=step1)
    assert resumed["global_step"] == 3
    assert resumed["losses"] == straight["losses"][1:]

    for run in ("a", "b"):
        ckpt = tmp_path / run / "checkpoints" / "epoch=0-step=3.ckpt"
        distributed_checkpoint_to_hf(ckpt, tmp_path / f"hf_{run}", cfg)
    weights_a = NorthForCausalLM.from_pretrained(tmp_path / "hf_a").state_dict()
    weights_b = NorthForCausalLM.from_pretrained(tmp_path / "hf_b").state_dict()
    initial = NorthForCausalLM(cfg).state_dict()
    assert weights_a.keys() == initial.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], atol=0, rtol=0, msg=name)
    assert not torch.equal(weights_a["model.layers.1.mlp.experts.gate_up_proj"],
                           initial["model.layers.1.mlp.experts.gate_up_proj"])
