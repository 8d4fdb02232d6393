"""Fuzzing the record boundary: valid records mutated at random (values of the wrong type, keys dropped or
added, JSON text cut or garbled) are either read as records or counted as `RecordError`s naming file:line; no
other exception type ever escapes `iter_records`."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from north_lightning.assets import ASSETS_DIR
from north_lightning.formats.records import BadRecordCounter, Position, RecordError, Trajectory, iter_records

CASES = 3000


def _valid_dicts() -> list[dict[str, Any]]:
    """The valid records of the bundled SFT data (its noisy file holds bad lines on purpose), 40 per file."""
    paths = sorted((ASSETS_DIR / "sft_data").glob("*.jsonl"))
    out = []
    for path in paths:
        out += [record.to_dict() for record, _ in list(iter_records([path]))[:40]]
    return out


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["none", "bool", "int", "float", "str", "list", "dict", "big", "nan"] if depth < 3 else ["int", "str"]
    kind = rng.choice(kinds)
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.randint(-3, 3)
    if kind == "big":
        return 10 ** rng.randint(18, 40)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "nan":
        return float(rng.choice(["nan", "inf", "-inf"]))
    if kind == "str":
        return rng.choice(["", "x", "bash", "{", "{\"a\": 1}", "[]", "null", "\u0000", "str_replace_editor"])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["name", "arguments", "output", "exit_code", "calls", "k"]): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def _containers(value: Any, acc: list) -> list:
    """Every (container, key) slot in a nested value."""
    if isinstance(value, dict):
        for k in list(value):
            acc.append((value, k))
            _containers(value[k], acc)
    elif isinstance(value, list):
        for i in range(len(value)):
            acc.append((value, i))
            _containers(value[i], acc)
    return acc


def _mutate(record: dict[str, Any], rng: random.Random) -> str:
    record = json.loads(json.dumps(record))
    for _ in range(rng.randint(1, 3)):
        slots = _containers(record, [])
        op = rng.random()
        if not slots or op < 0.05:
            record = _random_value(rng)
            break
        container, key = rng.choice(slots)
        if op < 0.6:
            container[key] = _random_value(rng)
        elif op < 0.8 and isinstance(container, dict):
            del container[key]
        elif isinstance(container, dict):
            container[rng.choice(["extra", "calls", "observations", "meta", "tools"])] = _random_value(rng)
        else:
            container.insert(key, _random_value(rng))
    text = json.dumps(record)
    if rng.random() < 0.1:  # garble the text itself
        cut = rng.randrange(len(text) + 1)
        text = text[:cut] + rng.choice(["", "}", "\"", "\\", "]]", "\udcff"]) + text[cut + 1:]
    return text.replace("\n", " ")


def test_every_mutated_record_is_read_or_counted_with_its_line(tmp_path: Path) -> None:
    rng = random.Random(1234)
    valid = _valid_dicts()
    lines = [_mutate(rng.choice(valid), rng) for _ in range(CASES)]
    deep = "[" * 100_000 + "]" * 100_000  # deeper than json's recursion limit
    lines += [deep, json.dumps({"id": "d", "task": "t", "source": "s", "steps": [{"calls": [
        {"name": "bash", "arguments": deep}]}]})]
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(lines) + "\n", errors="surrogatepass")
    counter = BadRecordCounter(max_examples=10 ** 6)
    read = list(iter_records([path], on_error="count", counter=counter))
    assert len(read) + sum(counter.counts.values()) == len(lines)
    assert len(read) > 100 and sum(counter.counts.values()) > 1000  # the mutations do both
    assert all(example.startswith(f"{path}:") for example in counter.examples)
    for record, _ in read:
        Trajectory.from_dict(record.to_dict())  # what was accepted is well-formed

    ends = list(itertools.accumulate(len(x.encode(errors="surrogatepass")) + 1 for x in lines))
    failed, start = 0, None
    while True:  # on_bad_record: fail stops at the first bad line, naming it; resume after it, until the end
        try:
            list(iter_records([path], on_error="fail", start=start))
            break
        except RecordError as err:
            failed += 1
            line = int(str(err)[len(f"{path}:"):].split(":")[0])
            start = Position(0, ends[line - 1], line + 1)
    assert failed == sum(counter.counts.values())
