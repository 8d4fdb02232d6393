"""The canonical trajectory record: one schema for every SFT source, whatever harness renders it later.

Why a canonical record: the same oracle trajectory is rendered through several harness formats (data
augmentation), so the record stores *what the agent did* (thought, tool call, observation), not how one
harness spelled it. A record either is harness-agnostic (`harness: null`; its tool calls use the canonical
vocabulary `bash{command}` and `submit{}` that every harness can express) or is fixed to one harness (its
calls use that harness's native tools, e.g. `str_replace_editor` for SWE-agent).

JSON schema of one record (one JSONL line; Parquet stores the same fields, nested ones as JSON strings)::

    {
      "id": "toy-0001",                      # unique within a source (required)
      "task": "Create /app/out.txt ...",     # the task prompt shown to the agent (required)
      "system": null,                        # optional system prompt overriding the harness default
      "tools": null,                         # optional OpenAI tool schemas overriding the harness tools
      "steps": [                             # the agent's turns, in order (may be empty: single-turn data)
        {"thought": "List files first.",
         "calls": [{"name": "bash", "arguments": {"command": "ls"}}],
         "observations": [{"output": "a.txt\n", "exit_code": 0}]}   # one per call; the final step
      ],                                                              # (e.g. submit) may have none
      "response": null,                      # final assistant text (single-turn answer / closing summary)
      "source": "toy_terminal",              # mixture source name (required)
      "domain": "agentic",                   # agentic | code | reasoning | instruction | ...
      "harness": null,                       # null = harness-agnostic, else a harness name
      "verified": true,                      # passed its unit tests / verifier
      "meta": {}                             # free-form provenance
    }
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from north_lightning.formats.harnesses import HARNESSES
from north_lightning.formats.harnesses.base import ToolCall

REQUIRED_FIELDS = ("id", "task", "source")
# The harness-agnostic action vocabulary every harness renders.
CANONICAL_TOOLS = ("bash", "submit")


class RecordError(ValueError):
    """A record that does not follow the schema; names the file and line (or row) it came from."""

    def __init__(self, where: str, reason: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class Observation:
    output: str
    exit_code: int | None = None


@dataclass(frozen=True)
class Step:
    thought: str = ""
    calls: tuple[ToolCall, ...] = ()
    observations: tuple[Observation, ...] = ()


@dataclass(frozen=True)
class Trajectory:
    id: str
    task: str
    source: str
    steps: tuple[Step, ...] = ()
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    response: str | None = None
    domain: str = "agentic"
    harness: str | None = None
    verified: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_agnostic(self) -> bool:
        return self.harness is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [
            {
                "thought": s.thought,
                "calls": [{"name": c.name, "arguments": c.arguments} for c in s.calls],
                "observations": [{"output": o.output, "exit_code": o.exit_code} for o in s.observations],
            }
            for s in self.steps
        ]
        return d

    @staticmethod
    def from_dict(d: Any, where: str = "<record>") -> Trajectory:
        """Validate and build; every problem raises `RecordError` naming `where` and a counter reason. The
        whole schema is checked here, at the boundary, so nothing downstream meets a wrongly typed field."""
        if not isinstance(d, dict):
            raise RecordError(where, "not_an_object", "record is not a JSON object")
        for key in REQUIRED_FIELDS:
            if not isinstance(d.get(key), str) or not d[key]:
                raise RecordError(where, "missing_field", f"missing or empty required field {key!r}")
        for key in ("system", "response", "domain", "harness"):
            _optional(d, key, str, "a string", where)
        _optional(d, "verified", bool, "true or false", where)
        _optional(d, "meta", dict, "an object", where)
        tools = _optional(d, "tools", list, "a list of tool schemas", where)
        if tools is not None and not all(isinstance(t, dict) for t in tools):
            raise RecordError(where, "bad_field", "field 'tools' must be a list of objects (OpenAI tool schemas)")
        steps = tuple(_step(s, i, where) for i, s in enumerate(_optional(d, "steps", list, "a list", where) or []))
        harness = d.get("harness")
        if harness is not None and harness not in HARNESSES:
            raise RecordError(where, "unknown_harness", f"unknown harness {harness!r}; known: {', '.join(sorted(HARNESSES))}")
        if not steps and not d.get("response"):
            raise RecordError(where, "missing_field", "record has neither steps nor a response")
        return Trajectory(
            id=d["id"],
            task=d["task"],
            source=d["source"],
            steps=steps,
            system=d.get("system"),
            tools=tools,
            response=d.get("response"),
            domain=d.get("domain") or "agentic",
            harness=harness,
            verified=bool(d.get("verified", False)),
            meta=dict(d.get("meta") or {}),
        )


def _optional(d: dict[str, Any], key: str, kind: type, what: str, where: str, at: str = "") -> Any:
    """`d[key]` when it is absent/null or a `kind`; else a `bad_field` RecordError naming the key."""
    value = d.get(key)
    if value is not None and not isinstance(value, kind):
        raise RecordError(where, "bad_field", f"field {at}{key!r} must be {what} or null, got {type(value).__name__}")
    return value


def _step(s: Any, i: int, where: str) -> Step:
    if not isinstance(s, dict):
        raise RecordError(where, "bad_field", f"steps[{i}] is not an object")
    at = f"steps[{i}]"
    _optional(s, "thought", str, "a string", where, f"{at}.")
    calls = []
    for j, c in enumerate(_optional(s, "calls", list, "a list", where, f"{at}.") or []):
        args = c.get("arguments", {}) if isinstance(c, dict) else None
        if isinstance(args, str):  # OpenAI wire format: arguments as a JSON string
            try:
                args = json.loads(args)
            except (json.JSONDecodeError, RecursionError):
                raise RecordError(where, "bad_tool_arguments", f"{at}.calls[{j}] arguments not JSON") from None
        elif args is None:
            args = {}
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"] or not isinstance(args, dict):
            raise RecordError(where, "bad_field", f"{at}.calls[{j}] needs a name and object arguments")
        calls.append(ToolCall(c["name"], args))
    observations = []
    for j, o in enumerate(_optional(s, "observations", list, "a list", where, f"{at}.") or []):
        if not isinstance(o, dict):
            raise RecordError(where, "bad_field", f"{at}.observations[{j}] is not an object")
        output, code = o.get("output"), o.get("exit_code")
        if output is not None and not isinstance(output, str):
            raise RecordError(where, "bad_field", f"{at}.observations[{j}].output must be a string")
        if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
            raise RecordError(where, "bad_field", f"{at}.observations[{j}].exit_code must be an integer or null")
        observations.append(Observation(output or "", code))
    if len(observations) > len(calls):
        raise RecordError(where, "bad_field", f"{at} has more observations than calls")
    return Step(s.get("thought") or "", tuple(calls), tuple(observations))


@dataclass(frozen=True)
class Position:
    """Where a reader stands: the shard index and, inside it, the byte offset (JSONL) or the row index
    (Parquet) of the next record, plus its 1-based line number for messages. Plain ints: goes in a
    checkpoint's state_dict as is."""

    shard: int = 0
    offset: int = 0
    line: int = 1

    def to_dict(self) -> dict[str, int]:
        return {"shard": self.shard, "offset": self.offset, "line": self.line}

    @staticmethod
    def from_dict(d: dict[str, int]) -> Position:
        return Position(int(d["shard"]), int(d["offset"]), int(d["line"]))


@dataclass
class BadRecordCounter:
    """Counts records the reader could not use, by reason, with the first few locations for the report."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20

    def add(self, error: RecordError) -> None:
        self.counts[error.reason] = self.counts.get(error.reason, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))


def _iter_jsonl(path: Path, shard: int, offset: int, line: int) -> Iterator[tuple[Any, str, Position]]:
    with path.open("rb") as f:
        f.seek(offset)
        while True:
            raw = f.readline()
            if not raw:
                return
            offset += len(raw)
            where = f"{path}:{line}"
            line += 1
            if not raw.strip():
                continue
            try:
                obj: Any = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                obj = RecordError(where, "malformed_json", f"malformed JSON line ({exc})")
            yield obj, where, Position(shard, offset, line)


_PARQUET_JSON_COLUMNS = ("steps", "tools", "meta")


def _iter_parquet(path: Path, shard: int, row: int) -> Iterator[tuple[Any, str, Position]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    first = 0
    for group in range(pf.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        if row >= first + n:
            first += n
            continue
        rows = pf.read_row_group(group).to_pylist()  # one row group in memory, never the whole file
        for i in range(row - first, n):
            d = rows[i]
            for key in _PARQUET_JSON_COLUMNS:
                if isinstance(d.get(key), str):
                    try:
                        d[key] = json.loads(d[key])
                    except (json.JSONDecodeError, RecursionError):
                        d = RecordError(f"{path}:row {first + i}", "malformed_json", f"column {key!r} not JSON")
                        break
            yield d, f"{path}:row {first + i}", Position(shard, first + i + 1, first + i + 2)
        row = first + n
        first += n


def iter_records(
    paths: list[str | Path],
    *,
    start: Position | None = None,
    on_error: str = "count",
    counter: BadRecordCounter | None = None,
) -> Iterator[tuple[Trajectory, Position]]:
    """Stream records from JSONL / Parquet shards in order, starting at `start`; yields each record with the
    position *after* it (resume there to continue with the next one). Bad records raise (`on_error="fail"`)
    or are counted in `counter` with their file and line (`on_error="count"`)."""
    if on_error not in ("count", "fail"):
        raise ValueError(f"on_error must be 'count' or 'fail', got {on_error!r}")
    start = start or Position()
    for shard in range(start.shard, len(paths)):
        path = Path(paths[shard])
        if not path.exists():
            raise FileNotFoundError(f"data shard not found: {path}")
        first = shard == start.shard
        if path.suffix == ".parquet":
            rows = _iter_parquet(path, shard, start.offset if first else 0)
        elif path.suffix in (".jsonl", ".json"):
            rows = _iter_jsonl(path, shard, start.offset if first else 0, start.line if first else 1)
        else:
            raise ValueError(f"unknown data shard format {path.suffix!r} (expected .jsonl or .parquet): {path}")
        for obj, where, pos in rows:
            try:
                if isinstance(obj, RecordError):
                    raise obj
                record = Trajectory.from_dict(obj, where)
            except RecordError as err:
                if on_error == "fail":
                    raise
                if counter is not None:
                    counter.add(err)
                continue
            yield record, pos


def write_jsonl(path: str | Path, records: list[Trajectory]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")


def write_parquet(path: str | Path, records: list[Trajectory], row_group_size: int = 256) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for r in records:
        d = r.to_dict()
        for key in _PARQUET_JSON_COLUMNS:
            d[key] = json.dumps(d[key], ensure_ascii=False)
        rows.append(d)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
