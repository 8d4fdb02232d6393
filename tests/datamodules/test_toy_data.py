"""Bundled demo SFT data: regenerable bit for bit, training split only, native edits that really fix the bug."""

from __future__ import annotations

import json
from pathlib import Path

from north_lightning.assets import ASSETS_DIR
from north_lightning.datamodules.records import iter_records
from north_lightning.datamodules.toy_data import build
from north_lightning.envs.toy_tasks import _BUGS, make_toy_task, split_of

BUNDLED = ASSETS_DIR / "sft_data"


def test_bundled_files_are_what_the_generator_writes(tmp_path):
    counts = build(tmp_path)
    for name in counts:
        assert (tmp_path / name).read_bytes() == (BUNDLED / name).read_bytes(), f"regenerate {name}"


def test_only_training_parameters_and_consistent_oracles():
    seen = 0
    for record, _ in iter_records(sorted(BUNDLED.glob("*.jsonl")), on_error="fail"):
        if record.domain == "agentic":
            family, params = record.meta["family"], record.meta["params"]
            assert split_of(family, params) == "train", record.id
            task = make_toy_task(family, params)
            commands = [c.arguments["command"] for s in record.steps for c in s.calls if c.name == "bash"]
            if record.harness is None:
                assert all(cmd in commands for cmd in task.oracle)
            assert record.steps[-1].calls[-1].name == "submit"
            seen += 1
        elif record.domain == "reasoning":
            a, op, b = record.task.removeprefix("What is ").removesuffix("?").split()
            assert split_of("arith", {"a": int(a), "op": op, "b": int(b)}) == "train"
    assert seen > 100


def test_native_edits_turn_the_bug_into_the_fix():
    path = BUNDLED / "toy_swe_native_train.jsonl"
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        fn = rec["meta"]["params"]["fn"]
        _, buggy, fixed, _ = _BUGS[fn]
        edit = rec["steps"][1]["calls"][0]["arguments"]
        old, new = (edit["old_str"], edit["new_str"]) if "old_str" in edit else (edit["oldString"], edit["newString"])
        assert old.strip() == buggy and new.strip() == fixed and old[:4] == new[:4] == "    "
    assert Path(path).stat().st_size < 1_000_000
