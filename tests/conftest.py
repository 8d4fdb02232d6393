"""Shared test settings. Fixtures that belong to one component live in that component's test folder."""

import os

import pytest
import torch

# Deterministic, small-thread CPU runs: the CI machine has 2 cores shared with dockerd and vLLM.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip locally when an optional dependency is missing, but fail in CI, where every CPU dependency
    must be present (a skip there would hide a broken install)."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)
