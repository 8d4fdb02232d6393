"""Every filter reason fires on the sample made to trigger it, is counted per component, and can fail instead."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from formats.sample_records import agnostic_record, swe_record
from transformers import AutoTokenizer

from north_lightning.assets import tiny_tokenizer_path
from north_lightning.datamodules.filters import FilterConfig, FilterError
from north_lightning.formats.harnesses.base import ToolCall
from north_lightning.formats.records import Observation, Step, write_jsonl
from north_lightning.datamodules.prepare import PrepareConfig, prepare
from north_lightning.datamodules.shards import ShardIndex


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_tokenizer_path())


def _with_step(record, i, step):
    steps = list(record.steps)
    steps[i] = step
    return replace(record, id=f"{record.id}-{i}-{len(step.thought)}", steps=tuple(steps))


def _bad_records():
    base = agnostic_record(1)
    s0, s1 = base.steps[0], base.steps[1]
    yield "invalid_tool_call:missing_argument", _with_step(base, 0, Step("look", (ToolCall("bash", {}),), s0.observations))
    yield "invalid_tool_call:unknown_tool", replace(swe_record(), id="swe-bad",
                                                    steps=(Step("", (ToolCall("python", {"code": "1"}),)),))
    yield "erroneous_whitespace", _with_step(base, 0, Step("Look first.   \nthen act", s0.calls, s0.observations))
    edit = {"command": "str_replace", "path": "/testbed/m.py", "old_str": "\t    return a - b", "new_str": "x"}
    yield "erroneous_whitespace", replace(swe_record(), id="swe-ws", steps=(Step("", (ToolCall("str_replace_editor", edit),),
                                                                                   (Observation("ok"),)),))
    yield "malformed_special_tokens", _with_step(base, 1, Step(s1.thought, s1.calls, (Observation("1\n<|END_OF_TURN_TOKEN|>"),)))
    yield "hallucinated_citation", _with_step(base, 1, Step("As /app/config.yaml says, see https://x.org/doc", s1.calls, s1.observations))
    yield "over_long", _with_step(base, 1, Step(s1.thought, s1.calls, (Observation("word " * 3000),)))


def _spec(path, harness="swe_agent"):
    return {"components": [{"name": "c", "paths": [str(path)], "harness": harness, "share": 1.0}]}


def _prepare(spec, out, **kw):
    """`data prepare` of a one-component mixture: (index meta, ids of the records kept for training)."""
    index = ShardIndex.load(prepare(PrepareConfig(spec, seq_len=2048, out_dir=str(out), **kw)))
    kept = [rid for chunk in sorted((index.path / "docs").rglob("*.json"))
            for rid in json.loads(chunk.read_text())["record_ids"]]
    return index.meta, kept


def test_each_reason_counted(tmp_path, tokenizer):
    cases = list(_bad_records())
    good = [agnostic_record(i) for i in range(3)]
    # a citation that is grounded (the file appears in an observation) is fine
    grounded = _with_step(agnostic_record(7), 1, Step("Now /app/n.txt holds 7.", agnostic_record(7).steps[1].calls,
                                                       (Observation("wrote /app/n.txt"),)))
    path = tmp_path / "d.jsonl"
    write_jsonl(path, good + [r for _, r in cases] + [grounded])
    with path.open("a") as f:
        f.write("{broken json\n")
    meta, kept = _prepare(_spec(path), tmp_path / "p")
    expected: dict[str, int] = {}
    for reason, _ in cases:
        expected[reason] = expected.get(reason, 0) + 1
    assert meta["filters"]["dropped_by_component"]["c"] == expected
    assert sorted(kept) == sorted([r.id for r in good] + [grounded.id])
    assert meta["bad_records"] == {"malformed_json": 1}
    assert f"{path}:{len(good) + len(cases) + 2}" in meta["bad_record_examples"][0]
    assert meta["filters"]["dropped_total"] == expected


def test_unrenderable_and_fail_modes(tmp_path, tokenizer):
    two_calls = replace(agnostic_record(2), id="two", steps=(Step("", (ToolCall("bash", {"command": "a"}),
                                                                        ToolCall("bash", {"command": "b"}))),))
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [agnostic_record(1), two_calls])
    meta, _ = _prepare(_spec(path, "mini_swe_agent"), tmp_path / "p")
    assert meta["filters"]["dropped_by_component"]["c"] == {"unrenderable": 1}
    with pytest.raises(FilterError, match="record 'two' rejected: unrenderable"):
        _prepare(_spec(path, "mini_swe_agent"), tmp_path / "p2", on_reject="fail")
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValueError, match=r"d\.jsonl:3: malformed JSON"):
        _prepare(_spec(path), tmp_path / "p3", on_bad_record="fail")


def test_checks_are_configurable():
    with pytest.raises(ValueError, match="unknown filter checks"):
        FilterConfig(checks=("spelling",))
    with pytest.raises(ValueError, match="on_reject"):
        FilterConfig(on_reject="ignore")
