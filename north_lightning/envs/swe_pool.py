"""Import SWE-bench-family datasets into a task pool (`tasks import --format F SRC --out POOL`).

A pool is a JSONL file of SWE records that `envs.tasks.load_swe_jsonl` reads (each names its instance image,
so no local repository is needed), one line per instance, with the fields the grader uses: `instance_id`,
`repo` (owner/name), `base_commit`, `patch` (the gold fix), `test_patch`, `problem_statement`, `FAIL_TO_PASS`,
`PASS_TO_PASS` (lists), `version`, `image`, `test_cmd` / `log_parser` (how the benchmark runs and reads the
tests; empty = our per-runner default), `expected_status` (R2E-Gym grades every listed test against an
expected status), and `source` (`file:line` of the row it came from).

Sources: a `.jsonl` file, a `.parquet` file, or a directory written by `datasets.Dataset.save_to_disk` (its
`state.json` names Arrow stream files), or a folder of `.jsonl` / `.parquet` files. Rows are counted from 1
(JSONL: the line number; Parquet / Arrow: the row number over the files in order).

Schemas followed (read from the upstream code and dataset cards):
- `swe-bench`: `swebench` 5.0.2 (`swebench/types.py` SWEbenchInstance; `image_builder/image_spec.py` for the
  instance image `swebench/sweb.eval.x86_64.<instance_id, "__" -> "_1776_">:latest`, lower case), the
  princeton-nlp/SWE-bench(_Verified, _Lite) cards (FAIL_TO_PASS / PASS_TO_PASS as JSON strings) and the
  SWE-Gym/SWE-Gym card (same fields, lists; no image published: the swebench-style name is derived).
- `swe-rebench`: nebius/SWE-rebench card (SWE-bench fields with list-valued test ids, `install_config` with
  `test_cmd` and `log_parser`, `docker_image`); the V2 release (nebius/SWE-rebench-V2) has the same keys.
- `swe-smith`: SWE-bench/SWE-smith card (`instance_id, patch, FAIL_TO_PASS, PASS_TO_PASS, image_name, repo,
  problem_statement`) and SWE-smith `swesmith/harness/utils.py` @5576aba: `patch` is the patch that
  *introduces* the bug (the fix is its reverse), the instance lives on a branch named by `instance_id` in the
  mirror repository inside the image, and the image is `jyangballin/<image_name, "__" -> "_1776_">`.
- `r2e-gym`: R2E-Gym @69bc953 (`agenthub/runtime/docker.py`, `commit_models/diff_classes.py`): `repo_name`
  (a short name), `docker_image`, `commit_hash`, `parsed_commit_content` (JSON ParsedCommit; the gold patch is
  its non-test file diffs), `problem_statement`, `expected_output_json` (test -> expected status), tests run
  by `/run_tests.sh` against the hidden `r2e_tests` folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from north_lightning.envs.tasks import TaskError

FORMATS = ("swe-bench", "swe-smith", "r2e-gym", "swe-rebench")
# R2E-Gym names repositories by their short name; the owners are those of its SUPPORTED_REPOS.
R2E_OWNERS = {
    "sympy": "sympy/sympy", "pandas": "pandas-dev/pandas", "pillow": "python-pillow/Pillow", "numpy": "numpy/numpy",
    "tornado": "tornadoweb/tornado", "coveragepy": "nedbat/coveragepy", "aiohttp": "aio-libs/aiohttp",
    "pyramid": "Pylons/pyramid", "datalad": "datalad/datalad", "scrapy": "scrapy/scrapy", "orange3": "biolab/orange3",
}


class RowError(ValueError):
    """One row that cannot become a task; `where` is `file:line`."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where


# ---- reading rows -------------------------------------------------------------------------------------------
def _arrow_files(directory: Path) -> list[Path]:
    state = directory / "state.json"
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise TaskError(f"{state}: not a `datasets.save_to_disk` state file ({err})") from err
    return [directory / name for name in names]


def _arrow_rows(path: Path, *, stream: bool) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if stream:  # `save_to_disk` writes Arrow IPC *stream* files
            with pa.memory_map(str(path)) as source:
                batches: Iterator[Any] = iter(pa.ipc.open_stream(source).read_all().to_batches())
                yield from (row for batch in batches for row in batch.to_pylist())
        else:
            for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=256):
                yield from batch.to_pylist()
    except (pa.ArrowInvalid, OSError) as err:
        raise TaskError(f"{path}: cannot read {'Arrow' if stream else 'Parquet'}: {err}") from err


def iter_rows(src: str | Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(`file:line`, row) for every row of `src`; row None = a line that is not a JSON object (reported)."""
    src = Path(src)
    if src.is_dir():
        if (src / "state.json").is_file():
            files = [(p, "arrow") for p in _arrow_files(src)]
        else:
            files = [(p, p.suffix[1:]) for p in sorted(src.iterdir()) if p.suffix in (".jsonl", ".parquet")]
            if not files:
                raise TaskError(f"{src}: no .jsonl / .parquet files and no datasets state.json")
    elif src.is_file():
        kind = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}.get(src.suffix)
        if kind is None:
            raise TaskError(f"{src}: unknown file type (expected .jsonl, .parquet, or a save_to_disk directory)")
        files = [(src, kind)]
    else:
        raise TaskError(f"{src}: no such file or directory")
    for path, kind in files:
        if kind == "jsonl":
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    yield f"{path}:{lineno}", row if isinstance(row, dict) else None
        else:
            for index, row in enumerate(_arrow_rows(path, stream=kind == "arrow"), 1):
                yield f"{path}:{index}", row


# ---- field helpers ------------------------------------------------------------------------------------------
def _text(row: dict[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    value = row.get(key)
    if value is None:
        raise RowError(where, f"missing field {key!r}")
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise RowError(where, f"field {key!r} must be a non-empty string, got {str(value)[:80]!r}")
    return value


def _tests(row: dict[str, Any], key: str, where: str) -> list[str]:
    value = row.get(key)
    if value is None:
        raise RowError(where, f"missing field {key!r}")
    if isinstance(value, str):  # SWE-bench stores the lists as JSON strings
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowError(where, f"field {key!r} is not a JSON list: {err}") from err
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise RowError(where, f"field {key!r} must be a list of test ids, got {str(value)[:80]!r}")
    return value


def hub_image_name(namespace: str, key: str) -> str:
    """Docker Hub refuses `__` in names; SWE-bench and SWE-smith publish them as `_1776_`."""
    return f"{namespace}/{key}".replace("__", "_1776_").lower()


def swebench_image(instance_id: str, namespace: str = "swebench") -> str:
    return hub_image_name(namespace, f"sweb.eval.x86_64.{instance_id}:latest")


def django_labels(test_patch: str) -> list[str]:
    """Django's runner takes dotted module labels: `tests/a/test_b.py` -> `a.test_b` (as SWE-bench runs it)."""
    labels = []
    for line in test_patch.splitlines():
        if line.startswith("+++ b/tests/") and line.endswith(".py"):
            labels.append(line[len("+++ b/tests/"):-3].replace("/", "."))
    return sorted(set(labels))


def _range_len(spec: str) -> int:
    return int(spec.split(",")[1]) if "," in spec else 1


def reverse_patch(patch: str) -> str:
    """The unified diff that undoes `patch` (SWE-smith publishes bug-introducing patches; the fix is this).
    Hunk bodies are walked by their line counts, so content lines that look like headers stay content."""
    out: list[str] = []
    lines = patch.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = line[4:], lines[i + 1][4:]
            out += ["--- " + (new.replace("b/", "a/", 1) if new.startswith("b/") else new),
                    "+++ " + (old.replace("a/", "b/", 1) if old.startswith("a/") else old)]
            i += 2
            continue
        match = re.match(r"^@@ -(\S+) \+(\S+) @@(.*)$", line)
        if match:
            old_spec, new_spec, section = match.groups()
            out.append(f"@@ -{new_spec} +{old_spec} @@{section}")
            old_left, new_left = _range_len(old_spec), _range_len(new_spec)
            i += 1
            while i < len(lines) and (old_left > 0 or new_left > 0 or lines[i].startswith("\\")):
                body = lines[i]
                if body.startswith("+"):
                    out.append("-" + body[1:])
                    new_left -= 1
                elif body.startswith("-"):
                    out.append("+" + body[1:])
                    old_left -= 1
                else:
                    out.append(body)
                    if not body.startswith("\\"):
                        old_left, new_left = old_left - 1, new_left - 1
                i += 1
            continue
        if line.startswith("new file mode"):
            line = "deleted file mode" + line[len("new file mode"):]
        elif line.startswith("deleted file mode"):
            line = "new file mode" + line[len("deleted file mode"):]
        elif line.startswith("index ") and ".." in line:
            old, _, rest = line[6:].partition("..")
            new, _, mode = rest.partition(" ")
            line = f"index {new}..{old}" + (f" {mode}" if mode else "")
        out.append(line)
        i += 1
    return "\n".join(out) + ("\n" if patch.endswith("\n") else "")


def parser_name(upstream: str | None) -> str:
    """Our parser for an upstream parser name (`parse_log_pytest_v2` -> `pytest`); unknown names stay as is."""
    if not upstream:
        return "pytest"
    name = upstream.removeprefix("parse_log_")
    if name in ("pytest_v2", "pytest_options"):
        return name.replace("_", "-")
    if name.startswith("pytest"):
        return "pytest"
    return {"sympy": "sympy", "gotest": "go", "django": "django", "jest": "jest", "unittest": "unittest"}.get(name, name)


# ---- per-format conversion ----------------------------------------------------------------------------------
def _from_swe_bench(row: dict[str, Any], where: str) -> dict[str, Any]:
    record = {
        "instance_id": _text(row, "instance_id", where), "repo": _text(row, "repo", where),
        "base_commit": _text(row, "base_commit", where), "patch": _text(row, "patch", where),
        "test_patch": _text(row, "test_patch", where, allow_empty=True),
        "problem_statement": _text(row, "problem_statement", where),
        "FAIL_TO_PASS": _tests(row, "FAIL_TO_PASS", where), "PASS_TO_PASS": _tests(row, "PASS_TO_PASS", where),
        "version": str(row.get("version") or ""), "created_at": str(row.get("created_at") or ""),
    }
    record["image"] = row.get("image") or row.get("docker_image") or swebench_image(record["instance_id"])
    django = record["repo"].lower() == "django/django"
    record["log_parser"] = SWE_BENCH_PARSERS.get(record["repo"].lower(), "pytest")
    record["test_cmd"] = ("./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 "
                          + " ".join(django_labels(record["test_patch"]))) if django else ""
    return record


def _from_swe_rebench(row: dict[str, Any], where: str) -> dict[str, Any]:
    record = _from_swe_bench(row, where)
    config = row.get("install_config") or {}
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as err:
            raise RowError(where, f"field 'install_config' is not JSON: {err}") from err
    if not row.get("docker_image") and not row.get("image"):
        record["image"] = swebench_image(record["instance_id"], "swerebench")
    if config.get("test_cmd"):
        cmd = config["test_cmd"]
        record["test_cmd"] = " && ".join(cmd) if isinstance(cmd, list) else str(cmd)
    if config.get("log_parser"):
        record["log_parser"] = parser_name(config["log_parser"])
    return record


def _from_swe_smith(row: dict[str, Any], where: str) -> dict[str, Any]:
    instance_id = _text(row, "instance_id", where)
    bug = _text(row, "patch", where)
    image = _text(row, "image_name", where)
    repo = _text(row, "repo", where)  # swesmith/<owner>__<name>.<commit8>: the mirror; the source repo below
    source_repo = repo.split("/", 1)[-1].rsplit(".", 1)[0].replace("__", "/", 1)
    return {
        "instance_id": instance_id, "repo": source_repo, "mirror_repo": repo,
        "base_commit": instance_id,  # the instance's branch in the mirror repository, checked out first
        "setup_cmd": f"git checkout -q {instance_id}",
        "patch": reverse_patch(bug), "bug_patch": bug, "test_patch": "",
        "problem_statement": _text(row, "problem_statement", where),
        "FAIL_TO_PASS": _tests(row, "FAIL_TO_PASS", where), "PASS_TO_PASS": _tests(row, "PASS_TO_PASS", where),
        "version": "", "created_at": str(row.get("created_at") or ""),
        "image": image if "/" in image else hub_image_name("jyangballin", image) + ("" if ":" in image else ":latest"),
        "log_parser": "pytest", "test_cmd": "",
    }


def r2e_gold_patch(parsed_commit: dict[str, Any]) -> str:
    """The non-test file diffs of an R2E ParsedCommit as a unified diff (its hunks, rendered by us)."""
    out = []
    for diff in parsed_commit.get("file_diffs", []):
        path = diff["header"]["file"]["path"]
        parts = path.split("/")
        if (path.endswith("_test.py") or parts[-1].startswith("test_")
                or {"tests", "Tests", "test", "Test"} & set(parts[:-1])):
            continue
        out.append(f"diff --git a/{path} b/{path}")
        if diff.get("header", {}).get("misc_line"):
            out.append(diff["header"]["misc_line"])
        minus, plus = diff.get("minus_file"), diff.get("plus_file")
        if minus and plus:
            out += [f"--- {minus['path']}", f"+++ {plus['path']}"]
        for hunk in diff.get("hunks", []):
            d = hunk["descriptor"]
            rng = [f"{r['start']}" + (f",{r['length']}" if r.get("length") is not None else "")
                   for r in (d["old_range"], d["new_range"])]
            out.append(f"@@ -{rng[0]} +{rng[1]} @@" + (f" {d['section']}" if d.get("section") else ""))
            prefix = {"context": " ", "added": "+", "deleted": "-", "note": "\\ "}
            out += [prefix[line["type"]] + line["content"] for line in hunk["line_group"]["all_lines"]]
    return "\n".join(out) + "\n" if out else ""


def _from_r2e_gym(row: dict[str, Any], where: str) -> dict[str, Any]:
    name = _text(row, "repo_name", where)
    commit_hash = _text(row, "commit_hash", where)
    try:
        expected = json.loads(_text(row, "expected_output_json", where))
        parsed = json.loads(_text(row, "parsed_commit_content", where))
    except json.JSONDecodeError as err:
        raise RowError(where, f"'expected_output_json' / 'parsed_commit_content' is not JSON: {err}") from err
    if not isinstance(expected, dict) or not expected:
        raise RowError(where, "field 'expected_output_json' must be a non-empty object of test -> status")
    passing = sorted(t for t, s in expected.items() if s == "PASSED")
    return {
        "instance_id": f"{name}__{commit_hash}", "repo": R2E_OWNERS.get(name.lower(), name),
        "base_commit": parsed.get("old_commit_hash") or "", "patch": r2e_gold_patch(parsed), "test_patch": "",
        "problem_statement": _text(row, "problem_statement", where),
        "FAIL_TO_PASS": passing, "PASS_TO_PASS": [], "expected_status": expected,
        "version": "", "created_at": str(parsed.get("commit_date") or ""), "image": _text(row, "docker_image", where),
        "log_parser": "r2e-pytest", "test_cmd": "ln -sfn /r2e_tests r2e_tests; bash /run_tests.sh",
    }


# swebench 5.0.2 harness/log_parsers/python.py MAP_REPO_TO_PARSER_PY in our parser names. Not reproduced:
# matplotlib's (MouseButton names rewritten) and seaborn's (`id PASSED` lines) variants; those use `pytest`.
SWE_BENCH_PARSERS = {
    "django/django": "django", "sympy/sympy": "sympy", "astropy/astropy": "pytest-v2",
    "scikit-learn/scikit-learn": "pytest-v2", "sphinx-doc/sphinx": "pytest-v2", "psf/requests": "pytest-options",
    "pylint-dev/pylint": "pytest-options", "pydicom/pydicom": "pytest-options",
}


CONVERTERS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "swe-bench": _from_swe_bench, "swe-rebench": _from_swe_rebench, "swe-smith": _from_swe_smith,
    "r2e-gym": _from_r2e_gym,
}


@dataclass
class ImportReport:
    imported: int = 0
    rejected: list[str] = field(default_factory=list)  # "file:line: reason"
    duplicates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "rejected": len(self.rejected), "duplicates": len(self.duplicates),
                "rejected_rows": self.rejected, "duplicate_rows": self.duplicates}


def import_pool(fmt: str, src: str | Path, out: str | Path, *, strict: bool = False) -> ImportReport:
    """Convert every row of `src` (format `fmt`) and write the pool JSONL `out`. Rows missing a field the
    grader needs are skipped and listed with their `file:line` (with `strict`, the first one raises)."""
    if fmt not in CONVERTERS:
        raise TaskError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    convert, report, seen = CONVERTERS[fmt], ImportReport(), set()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for where, row in iter_rows(src):
            try:
                if row is None:
                    raise RowError(where, "not a JSON object")
                record = convert(row, where)
                if not record["FAIL_TO_PASS"]:
                    raise RowError(where, "FAIL_TO_PASS is empty (nothing would prove the fix)")
            except RowError as err:
                if strict:
                    raise TaskError(str(err)) from err
                report.rejected.append(str(err))
                continue
            if record["instance_id"] in seen:
                report.duplicates.append(f"{where}: duplicate instance_id {record['instance_id']!r}")
                continue
            seen.add(record["instance_id"])
            record["source"], record["source_format"] = where, fmt
            fh.write(json.dumps(record) + "\n")
            report.imported += 1
    tmp.replace(out)
    return report
