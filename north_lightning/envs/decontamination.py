"""Decontaminate a task pool against evaluation benchmarks (`tasks decontaminate POOL --against ...`).

An instance is dropped when its repository is one a benchmark draws from (training on a benchmark's
repositories leaks its code, tests and often its very issues), and, optionally, when its problem statement
shares a word n-gram (13 by default, as in the GPT-3 contamination study) with a benchmark instance's.

The repository lists ship as data files under `envs/benchmark_repos/` (`<name>.json`: name, source, date,
repos; `renames.json`: earlier names of those repositories). Identity is normalised before comparing: case,
URL forms (`https://github.com/o/n`, `git@github.com:o/n.git`, `github.com/o/n/`), a trailing `.git`, the
SWE-bench instance-id form `owner__name`, and listed renames.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from north_lightning.envs.tasks import TaskError

LISTS_DIR = Path(__file__).resolve().parent / "benchmark_repos"
_URL_PREFIX = re.compile(r"^(?:[a-z+]+://)?(?:[^@/]+@)?(?:www\.)?github\.com[:/]", re.IGNORECASE)


@dataclass(frozen=True)
class BenchmarkList:
    name: str
    source: str
    date: str
    repos: frozenset[str]  # normalised


def _renames() -> dict[str, str]:
    data = json.loads((LISTS_DIR / "renames.json").read_text())
    return {_plain(old): _plain(new) for old, new in data["renames"].items()}


def _plain(repo: str) -> str:
    text = _URL_PREFIX.sub("", repo.strip()).strip("/")
    text = text.removesuffix(".git").lower()
    if "/" not in text and "__" in text:  # SWE-bench instance ids spell owner/name as owner__name
        text = text.replace("__", "/", 1)
    return text


def normalize_repo(repo: str, renames: dict[str, str] | None = None) -> str:
    """`https://github.com/PyCQA/Pylint.git` -> `pylint-dev/pylint` (lower case, current name)."""
    plain = _plain(repo)
    renames = _renames() if renames is None else renames
    return renames.get(plain, plain)


def available_lists() -> list[str]:
    return sorted(p.stem for p in LISTS_DIR.glob("*.json") if p.stem != "renames")


def load_benchmark_list(name_or_path: str) -> BenchmarkList:
    """A shipped list by name (`swe-bench`, `swe-bench-verified`, `swe-bench-pro`) or a JSON file of the same
    shape (`name`, `source`, `date`, `repos`)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = LISTS_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise TaskError(f"no benchmark repository list {name_or_path!r} (shipped: {', '.join(available_lists())};"
                            " or give a JSON file with name, source, date, repos)")
    try:
        data = json.loads(path.read_text())
        renames = _renames()
        return BenchmarkList(str(data["name"]), str(data["source"]), str(data["date"]),
                             frozenset(normalize_repo(r, renames) for r in data["repos"]))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise TaskError(f"{path}: expected a JSON object with name, source, date and a repos list ({err})") from err


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class DecontaminationReport:
    lists: list[dict[str, str]]
    input: int = 0
    kept: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    dropped_ids: dict[str, str] = field(default_factory=dict)  # instance id -> reason

    def to_dict(self) -> dict[str, Any]:
        return {"lists": self.lists, "input": self.input, "kept": self.kept, "dropped": self.dropped_by_reason,
                "dropped_ids": self.dropped_ids}


def pool_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of every non-blank line of a pool JSONL; a line that is not a JSON object with
    `instance_id` and `repo` is a TaskError naming the file and line (decontamination and `tasks split` read
    pools this way and write kept lines unchanged)."""
    out = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["instance_id"], record["repo"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise TaskError(f"{path}:{lineno}: not a pool record with instance_id and repo ({err})") from err
        out.append((line, record))
    return out


def decontaminate(pool: str | Path, out: str | Path, against: Iterable[str], *,
                  instances: str | Path | None = None, ngram: int = 13) -> DecontaminationReport:
    """Write the pool's instances that survive to `out` (lines unchanged); reasons are `repo:<list>` (the
    first list naming the repository) and `ngram:<n>` (a shared n-gram with an `instances` problem statement)."""
    from north_lightning.envs.swe_pool import iter_rows

    lists = [load_benchmark_list(name) for name in against]
    report = DecontaminationReport([{"name": b.name, "source": b.source, "date": b.date} for b in lists])
    renames = _renames()
    grams: set[tuple[str, ...]] = set()
    if instances is not None:
        for where, row in iter_rows(instances):
            if row is None or not isinstance(row.get("problem_statement"), str):
                raise TaskError(f"{where}: a benchmark instance needs a 'problem_statement' string")
            grams |= word_ngrams(row["problem_statement"], ngram)
    kept_lines = []
    for line, record in pool_records(pool):
        iid, repo = record["instance_id"], record["repo"]
        report.input += 1
        identity = normalize_repo(repo, renames)
        reason = next((f"repo:{b.name}" for b in lists if identity in b.repos), None)
        if reason is None and grams and word_ngrams(str(record.get("problem_statement", "")), ngram) & grams:
            reason = f"ngram:{ngram}"
        if reason:
            report.dropped_ids[iid] = reason
            report.dropped_by_reason[reason] = report.dropped_by_reason.get(reason, 0) + 1
        else:
            kept_lines.append(line)
    report.kept = len(kept_lines)
    Path(out).write_text("".join(line + "\n" for line in kept_lines))
    return report
