"""FSDP2 + expert parallelism on the CPU with real process groups (gloo, 2-4 spawned processes).

Tolerances: fp32 parallel runs reproduce the 1-process losses to 1e-6 relative (only the summation order of the
gradient reductions differs); after 3 AdamW steps weights agree to 1e-4 (Adam's normalisation amplifies
1e-9-level gradient differences on near-zero entries). The expert-parallel MoE block matches to 1e-6 in fp32
(same math, same order within each expert). The bf16 + EP path under Lightning, with sharded checkpoints and
resume, is tested in test_lightning_strategy.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from north_lightning.model import NorthForCausalLM

WORKER = Path(__file__).with_name("parallel_worker.py")
_spec = importlib.util.spec_from_file_location("scale_parallel_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _run(tmp_path: Path, scenario: str, world: int, ep: int = 1, param_dtype: str = "none") -> dict:
    out = tmp_path / f"{scenario}.json"
    proc = subprocess.run([sys.executable, str(WORKER), scenario, str(world), str(out), str(ep), param_dtype],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def reference_train() -> dict:
    return worker.reference("train")


@pytest.mark.slow
def test_fsdp2_two_ranks_same_losses_and_hf_export(tmp_path: Path, reference_train: dict) -> None:
    got = _run(tmp_path, "train", world=2)
    assert got["losses"] == pytest.approx(reference_train["losses"], rel=1e-6)
    assert got["losses"][-1] < got["losses"][0]
    exported = NorthForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    for name, value in reference_train["state"].items():
        torch.testing.assert_close(exported[name], value, atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_expert_parallel_moe_block_equals_one_rank(tmp_path: Path, world: int) -> None:
    """world=2: ep=2 (each rank 8 of 16 experts); world=4: ep=2 x dp_mod_ep=2 (experts also dim-1 sharded)."""
    got = _run(tmp_path, "moe", world=world, ep=2)
    ref = worker.reference("moe")
    torch.testing.assert_close(torch.tensor(got["out"]), ref["out"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.tensor(got["gate_up"]), ref["gate_up"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(got["down"]), ref["down"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_sharded_hf_load_reads_only_local_slices(tmp_path: Path) -> None:
    """Meta-built model -> FSDP2 + EP shards -> each rank fills its blocks from a per-expert-layout HF dir.
    (world=4, ep=2, i.e. experts also split along dim 1, passed too; left out of CI for time.)"""
    worker.fresh_model().save_pretrained(tmp_path / "hf_src")
    got = _run(tmp_path, "load", world=2, ep=2)
    assert got["max_abs_diff"] == 0.0


def test_bf16_loaded_model_gets_fp32_master_shards() -> None:
    """A checkpoint loaded in bf16 must not train with bf16 master weights: parallelize_north up-casts each
    layer just before sharding it (1-process gloo group, in this process)."""
    import socket

    import torch.distributed as dist

    from north_lightning.model import NorthConfig
    from north_lightning.model.parallelize import parallelize_north

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = NorthForCausalLM(NorthConfig.preset("tiny", num_hidden_layers=2)).to(torch.bfloat16)
        parallelize_north(model, ep=1, param_dtype="bfloat16")
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert all(type(p).__name__ == "DTensor" for p in model.parameters())
        logp, _ = model.token_logprobs(torch.randint(0, 4096, (1, 16)), torch.randint(0, 4096, (1, 16)))
        logp.sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    finally:
        dist.destroy_process_group()
