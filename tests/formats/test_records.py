"""Canonical records: JSONL/Parquet round trip, streaming resume, bad input counted with file and line."""

from __future__ import annotations

import json

import pytest
from formats.sample_records import agnostic_record, chat_record, opencode_record, swe_record

from north_lightning.formats.records import (
    BadRecordCounter,
    Position,
    RecordError,
    iter_records,
    write_jsonl,
    write_parquet,
)


def _records():
    return [agnostic_record(i) for i in range(5)] + [swe_record(), opencode_record(), chat_record()]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_roundtrip_and_resume(tmp_path, fmt):
    recs = _records()
    a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
    writer = write_jsonl if fmt == "jsonl" else lambda p, r: write_parquet(p, r, row_group_size=2)
    writer(a, recs[:3])
    writer(b, recs[3:])
    got = list(iter_records([a, b], on_error="fail"))
    assert [r for r, _ in got] == recs
    for k in range(len(recs)):  # resuming after record k yields exactly the rest
        rest = [r for r, _ in iter_records([a, b], start=Position.from_dict(got[k][1].to_dict()))]
        assert rest == recs[k + 1 :]


def test_bad_lines_counted_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(agnostic_record(1).to_dict())
    lines = [good, "{not json", json.dumps({"id": "x", "source": "s"}), "",
             json.dumps({"id": "y", "task": "t", "source": "s", "steps": [{"calls": [{"name": "bash", "arguments": "{oops"}]}]}),
             json.dumps({"id": "z", "task": "t", "source": "s"}),
             json.dumps({"id": "h", "task": "t", "source": "s", "response": "r", "harness": "aider"}), good]
    path.write_text("\n".join(lines) + "\n")
    counter = BadRecordCounter()
    got = [r.id for r, _ in iter_records([path], counter=counter)]
    assert got == ["agn-1", "agn-1"]
    assert counter.counts == {"malformed_json": 1, "missing_field": 2, "bad_tool_arguments": 1, "unknown_harness": 1}
    assert any(e.startswith(f"{path}:7: unknown harness 'aider'") for e in counter.examples)
    assert counter.examples[0].startswith(f"{path}:2: malformed JSON line")
    assert f"{path}:3: missing or empty required field 'task'" in counter.examples[1]
    with pytest.raises(RecordError, match=f"{path}:2"):
        list(iter_records([path], on_error="fail"))


def test_missing_shard_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(iter_records([tmp_path / "nope.jsonl"]))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unknown data shard format '.csv'"):
        list(iter_records([tmp_path / "x.csv"]))
