"""The import loop every format shares: read items, convert each to a canonical record, validate it against
the one schema (`formats/records.py`), write Parquet shards, and account for every item in a report.

An item ends in exactly one bucket: `kept`, or dropped with a reason: `unresolved` (the format says the
attempt failed: a `target` of false, a reward of 0, resolved false), `truncated` (the episode did not end by
the agent's own submission: cost / context / step limits, errors, an autosubmission), `unsupported_tool` (a
tool no harness of ours can render or run), `malformed` (not in the upstream shape: missing keys, wrong
types, bad JSON). Each reason keeps the first few `file:line: message` examples. Unresolved items are
dropped by default and kept (as `verified: false`) with `include_unresolved`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from north_lightning.formats.records import RecordError, Trajectory, write_parquet

DROP_REASONS = ("unresolved", "truncated", "unsupported_tool", "malformed")
REPORT_NAME = "import_report-{source}.json"  # per source, so several imports can share a directory


class Drop(Exception):
    """Raised by a converter for an item it will not turn into a record; `reason` is one of DROP_REASONS."""

    def __init__(self, reason: str, message: str):
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}; known: {', '.join(DROP_REASONS)}")
        super().__init__(message)
        self.reason = reason


@dataclass
class ImportOptions:
    """What a converter needs besides the item: the mixture source name records get, and whether records the
    format marks as failed are kept."""

    source: str
    include_unresolved: bool = False


@dataclass
class ImportReport:
    format: str
    sources: list[str]
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {r: 0 for r in DROP_REASONS})
    examples: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in DROP_REASONS})
    kept_unresolved: int = 0
    shards: list[str] = field(default_factory=list)
    max_examples: int = 20

    def drop(self, reason: str, where: str, message: str) -> None:
        self.dropped[reason] += 1
        if len(self.examples[reason]) < self.max_examples:
            self.examples[reason].append(f"{where}: {message}")

    @property
    def total(self) -> int:
        return self.kept + sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "sources": self.sources, "total": self.total, "kept": self.kept,
                "kept_unresolved": self.kept_unresolved, "dropped": self.dropped, "examples": self.examples,
                "shards": self.shards}


# converter(item, where, options) -> Trajectory, raising Drop (or KeyError / TypeError / ValueError for an
# item not in the upstream shape, counted as malformed with the message)
Converter = Callable[[Any, str, ImportOptions], Trajectory]


def run_import(fmt: str, items: Iterator[tuple[Any, str]], convert: Converter, out: str | Path, *,
               options: ImportOptions, sources: list[str], shard_size: int = 10_000) -> ImportReport:
    """Convert every item, write `<source>-NNNNN.parquet` shards of `shard_size` records and
    `import_report-<source>.json` into `out`, and return the report. Shards of an earlier import of the same
    source name into `out` are replaced; other sources' shards there are left alone."""
    from north_lightning.datamodules.importers.sources import SourceError

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = options.source
    for old in out.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9].parquet"):
        old.unlink()
    report = ImportReport(fmt, sources)
    buffer: list[Trajectory] = []
    seen_ids: set[str] = set()

    def flush() -> None:
        if buffer:
            path = out / f"{prefix}-{len(report.shards):05d}.parquet"
            write_parquet(path, buffer)
            report.shards.append(path.name)
            buffer.clear()

    for item, where in items:
        try:
            if isinstance(item, SourceError):
                raise Drop("malformed", item.message)
            record = _validated(convert(item, where, options), where)
            if record.id in seen_ids:
                raise Drop("malformed", f"duplicate record id {record.id!r}")
        except Drop as drop:
            report.drop(drop.reason, where, str(drop))
            continue
        except RecordError as err:
            report.drop("malformed", where, str(err).removeprefix(f"{where}: "))
            continue
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            report.drop("malformed", where, _describe(err))
            continue
        seen_ids.add(record.id)
        report.kept += 1
        report.kept_unresolved += int(bool(record.meta.get("unresolved")))
        buffer.append(record)
        if len(buffer) >= shard_size:
            flush()
    flush()
    (out / REPORT_NAME.format(source=prefix)).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _validated(record: Trajectory, where: str) -> Trajectory:
    """The record as the schema reads it back (the same check every reader applies)."""
    return Trajectory.from_dict(json.loads(json.dumps(record.to_dict())), where)


def _describe(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing key {err.args[0]!r}"
    return f"{type(err).__name__}: {err}"


def require(obj: Any, key: str, kind: type | tuple[type, ...], what: str = "") -> Any:
    """`obj[key]` when it exists with the right type; otherwise a malformed drop naming the key."""
    if not isinstance(obj, dict):
        raise Drop("malformed", f"{what or 'item'} is not an object")
    if key not in obj:
        raise Drop("malformed", f"missing key {key!r}{' in ' + what if what else ''}")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise Drop("malformed", f"key {key!r}{' in ' + what if what else ''} is {type(value).__name__}, not {names}")
    return value


def text_of(content: Any) -> str:
    """Message content as text: a string, or OpenAI / Anthropic content parts (`[{"type": "text", ...}]`)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise Drop("malformed", f"message content is {type(content).__name__}, not text or content parts")


def decode_arguments(raw: Any, where: str = "tool call") -> dict[str, Any]:
    """Tool-call arguments: a JSON string (OpenAI wire format) or an already-decoded object."""
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise Drop("malformed", f"{where} arguments are not JSON ({exc.msg})") from None
        if isinstance(value, dict):
            return value
    raise Drop("malformed", f"{where} arguments are not a JSON object")


def check_resolved(resolved: bool | None, options: ImportOptions, detail: str) -> dict[str, Any]:
    """The format's own verdict on the attempt: None (the format does not say), True, or False (dropped as
    unresolved unless `include_unresolved`). Returns the meta entries the record carries about it."""
    if resolved is False and not options.include_unresolved:
        raise Drop("unresolved", detail)
    return {"resolved": resolved, **({"unresolved": True} if resolved is False else {})}


def task_text(text: str, patterns: Any) -> str:
    """The task statement inside a harness's first user message: the first group of the first of the
    harness's template `patterns` that matches, else the whole message (stripped)."""
    for pattern in patterns:
        found = pattern.search(text)
        if found:
            return found.group(1).strip()
    return text.strip()
