"""CPU dry runs of the GPU benchmarks (the scripts themselves must work before GPU time is spent on them), and the
attention-work accounting the MFU figure relies on."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _last_line_pairs(script: str, *argv: str) -> dict[str, str]:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *argv], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(pair.split("=", 1) for pair in proc.stdout.strip().splitlines()[-1].split())


def test_attention_bench_cpu_dry_run() -> None:
    pairs = _last_line_pairs("attention.py", "--device", "cpu", "--sizes", "128,256", "--iters", "1")
    for key in ("flex_ms_128", "sdpa_ms_256", "flex_growth_128_256", "ideal_growth_128_256"):
        assert float(pairs[key]) > 0


def test_train_mfu_bench_cpu_dry_run() -> None:
    pairs = _last_line_pairs("train_mfu.py", "--device", "cpu", "--layers", "1", "--seq", "128", "--iters", "1")
    assert 0 < float(pairs["mfu"]) < 1 and float(pairs["speedup_vs_torch_experts"]) > 0


def test_moe_block_bench_cpu_dry_run_reports_megablocks_unavailable() -> None:
    """Small shapes; megablocks asked for on the CPU (where it cannot run, and in CI is not installed) must be
    reported on the last line, not crash the comparison of the other backends."""
    absent = importlib.util.find_spec("megablocks") is None  # installed, it would fail (CUDA only): exit 1
    pairs = _last_line_pairs("moe_block.py", "--device", "cpu", "--tokens", "64", "--hidden", "128", "--ffn", "32",
                             "--experts", "8", "--top-k", "2",
                             "--backends", "torch,grouped,megablocks" if absent else "torch,grouped")
    assert float(pairs["torch_vs_hf"]) > 0 and float(pairs["grouped_vs_hf"]) > 0
    if absent:
        assert pairs["megablocks"].startswith("unavailable(ModuleNotFoundError:No_module_named_'megablocks'")
    assert pairs["device"] == "cpu" and "interrupted" not in pairs

def test_attended_keys_counts_document_window_pairs(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as `python bench/train_mfu.py` has it: `from kernel_timing import`
    spec = importlib.util.spec_from_file_location("train_mfu", ROOT / "bench" / "train_mfu.py")
    mfu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mfu)
    doc_S = torch.tensor([0, 0, 0, 0, 1, 1])
    # doc 0 (4 tokens): causal 1+2+3+4 = 10 keys, window 1: 1+2+2+2 = 7; doc 1: 1+2 = 3 either way
    assert mfu.attended_keys(doc_S, None) == 13 / 6
    assert mfu.attended_keys(doc_S, 1) == 10 / 6
