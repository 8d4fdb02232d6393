"""Bundled demo SFT data: regenerable bit for bit, training split only, native edits that really fix the bug."""

from __future__ import annotations

import json
from pathlib import Path

from north_lightning.assets import ASSETS_DIR
from north_lightning.formats.records import iter_records
from north_lightning.envs.toy_data import build
from north_lightning.envs.toy_tasks import _BUGS, make_toy_task, split_of

BUNDLED = ASSETS_DIR / "sft_data"


def test_bundled_files_are_what_the_generator_writes(tmp_path):
    counts = build(tmp_path)
    for name in counts:
        assert (tmp_path / name).read_bytes() == (BUNDLED / name).read_bytes(), f"regenerate {name}"


def test_only_training_parameters_and_consistent_oracles():
    seen = 0
    for record, _ in iter_records(sorted(BUNDLED.glob("*_train.jsonl")), on_error="fail"):
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


def test_noisy_demo_records_are_caught_by_the_filters(tmp_path):
    from formats.sample_records import agnostic_record
    from north_lightning.datamodules.prepare import PrepareConfig, prepare
    from north_lightning.datamodules.shards import ShardIndex
    from north_lightning.formats.records import write_jsonl

    good = tmp_path / "good.jsonl"
    write_jsonl(good, [agnostic_record(1)])
    noisy = str(BUNDLED / "toy_terminal_noisy.jsonl")
    spec = {"components": [
        {"name": "swe", "paths": [str(good), noisy], "harness": "swe_agent", "share": 1},
        {"name": "t2", "paths": [str(good), noisy], "harness": "terminus2", "share": 1}]}
    meta = ShardIndex.load(prepare(PrepareConfig(spec, seq_len=4096, out_dir=str(tmp_path / "prepared")))).meta
    assert [c["documents"] for c in meta["components"]] == [1, 1]
    assert meta["filters"]["dropped_by_component"]["swe"] == {
        "invalid_tool_call:missing_argument": 4, "malformed_special_tokens": 4, "hallucinated_citation": 4,
        "erroneous_whitespace": 4, "invalid_tool_call:unknown_tool": 4}
    assert meta["filters"]["dropped_by_component"]["t2"] == {"unrenderable": 8, "malformed_special_tokens": 4,
                                                 "hallucinated_citation": 4, "erroneous_whitespace": 4}
    assert meta["bad_records"] == {"malformed_json": 2, "missing_field": 2, "unknown_harness": 2}
