"""`tasks import`: SWE-bench-family rows (JSONL / Parquet / `datasets` save_to_disk) -> a pool the task loader
reads; rows missing a grader field are reported with file:line; SWE-smith's bug patch reversed and R2E-Gym's
parsed commit rendered give diffs that `git apply` accepts on real repositories."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from north_lightning.cli.tasks import main as tasks_main
from north_lightning.envs.swe_pool import import_pool, iter_rows, r2e_gold_patch, reverse_patch
from north_lightning.envs.tasks import TaskError, load_tasks

TEST_PATCH = ("diff --git a/tests/utils_tests/test_text.py b/tests/utils_tests/test_text.py\n"
              "--- a/tests/utils_tests/test_text.py\n+++ b/tests/utils_tests/test_text.py\n@@ -1 +1,2 @@\n x\n+y\n")


def swe_bench_row(iid: str = "django__django-11099", **over) -> dict:
    """A row shaped like princeton-nlp/SWE-bench_Verified (test lists as JSON strings)."""
    row = {"repo": "django/django", "instance_id": iid, "base_commit": "d26b2424437dabeeca94d7900b37d2df4410da0c",
           "patch": "diff --git a/x b/x\n", "test_patch": TEST_PATCH, "problem_statement": "UsernameValidator ...",
           "hints_text": "", "created_at": "2019-03-20T03:46:18Z", "version": "3.0",
           "FAIL_TO_PASS": json.dumps(["test_ascii_validator (auth_tests.test_validators.UsernameValidatorsTests)"]),
           "PASS_TO_PASS": json.dumps(["test_help_text (auth_tests.test_validators.UserAttributeSimilarityValidatorTest)"]),
           "environment_setup_commit": "419a78300f7cd27611196e1e464d50fd0385ff27"}
    row.update(over)
    return row


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_pool(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_swe_bench_jsonl_fields_image_and_bad_row_named(tmp_path):
    rows = [swe_bench_row(), swe_bench_row("astropy__astropy-12907", repo="astropy/astropy", test_patch=""),
            {k: v for k, v in swe_bench_row("sympy__sympy-1").items() if k != "FAIL_TO_PASS"},
            swe_bench_row("pallets__flask-1", repo="pallets/flask", FAIL_TO_PASS="[]")]
    src = write_jsonl(tmp_path / "verified.jsonl", rows)
    report = import_pool("swe-bench", src, tmp_path / "pool.jsonl")
    assert report.imported == 2
    assert report.rejected == [f"{src}:3: missing field 'FAIL_TO_PASS'",
                               f"{src}:4: FAIL_TO_PASS is empty (nothing would prove the fix)"]
    django, astropy = read_pool(tmp_path / "pool.jsonl")
    assert django["image"] == "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    assert django["FAIL_TO_PASS"] == ["test_ascii_validator (auth_tests.test_validators.UsernameValidatorsTests)"]
    assert django["log_parser"] == "django" and django["version"] == "3.0"
    assert django["test_cmd"].endswith("--parallel 1 utils_tests.test_text")
    assert astropy["log_parser"] == "pytest-v2" and astropy["test_cmd"] == ""  # as swebench maps astropy and astropy["source"] == f"{src}:2"
    tasks = load_tasks(tmp_path / "pool.jsonl")  # the pool is a task file the loader reads as is
    assert [t.instance_id for t in tasks] == ["django__django-11099", "astropy__astropy-12907"]
    assert tasks[0].log_parser == "django" and tasks[0].image == django["image"] and tasks[0].repo_dir is None
    with pytest.raises(TaskError, match=r"verified.jsonl:3: missing field 'FAIL_TO_PASS'"):
        import_pool("swe-bench", src, tmp_path / "strict.jsonl", strict=True)


def test_parquet_and_save_to_disk_sources(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [swe_bench_row(f"o__r-{i}", repo="o/r", FAIL_TO_PASS=[f"t.py::a{i}"], PASS_TO_PASS=[]) for i in range(3)]
    rows[1]["problem_statement"] = ""  # SWE-Gym style lists; row 2 unusable
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "gym.parquet")
    report = import_pool("swe-bench", tmp_path / "gym.parquet", tmp_path / "a.jsonl")
    assert report.imported == 2 and report.rejected[0].startswith(f"{tmp_path / 'gym.parquet'}:2: field 'problem_statement'")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "disk"))
    assert [w.rsplit(":", 1)[1] for w, _ in iter_rows(tmp_path / "disk")] == ["1", "2", "3"]
    report = import_pool("swe-bench", tmp_path / "disk", tmp_path / "b.jsonl")
    assert report.imported == 2
    assert [r["FAIL_TO_PASS"] for r in read_pool(tmp_path / "b.jsonl")] == [["t.py::a0"], ["t.py::a2"]]
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(TaskError, match="a.txt: unknown file type"):
        list(iter_rows(tmp_path / "a.txt"))


def test_swe_rebench_install_config(tmp_path):
    row = swe_bench_row("encode__httpx-1", repo="encode/httpx", FAIL_TO_PASS=["tests/t.py::a"], PASS_TO_PASS=[],
                        install_config={"test_cmd": "pytest --no-header -rA tests/t.py",
                                        "log_parser": "parse_log_pytest"})
    src = write_jsonl(tmp_path / "rebench.jsonl", [row, {**row, "instance_id": "a__b-2", "docker_image": "reg/img:2"}])
    import_pool("swe-rebench", src, tmp_path / "pool.jsonl")
    first, second = read_pool(tmp_path / "pool.jsonl")
    assert first["test_cmd"] == "pytest --no-header -rA tests/t.py" and first["log_parser"] == "pytest"
    assert first["image"] == "swerebench/sweb.eval.x86_64.encode_1776_httpx-1:latest"
    assert second["image"] == "reg/img:2"


def _git(repo: Path, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, input=stdin, capture_output=True, text=True,
                          env={"GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(repo), "PATH": "/usr/bin:/bin",
                               "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
                               "GIT_COMMITTER_EMAIL": "a@b"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_swe_smith_fix_is_the_reversed_bug_patch(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    # "-- a" -> "++ b" gives the hunk lines "--- a" / "+++ b", which look like file headers
    original = "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n-- a\n"
    (repo / "m.py").write_text(original)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "original")
    (repo / "m.py").write_text(original.replace("max(lo, min(x, hi))", "min(lo, max(x, hi))").replace("-- a", "++ b"))
    (repo / "new.py").write_text("added by the bug\n")
    _git(repo, "add", "-A")
    bug = _git(repo, "diff", "--cached")
    row = {"instance_id": "pallets__click.fde47b4b.func_pm_op_swap__1", "repo": "swesmith/pallets__click.fde47b4b",
           "patch": bug, "FAIL_TO_PASS": ["tests/t.py::a"], "PASS_TO_PASS": ["tests/t.py::b"],
           "image_name": "swesmith.x86_64.pallets__click.fde47b4b", "problem_statement": "clamp is wrong"}
    src = write_jsonl(tmp_path / "smith.jsonl", [row])
    import_pool("swe-smith", src, tmp_path / "pool.jsonl")
    (record,) = read_pool(tmp_path / "pool.jsonl")
    assert record["repo"] == "pallets/click" and record["base_commit"] == row["instance_id"]
    assert record["image"] == "jyangballin/swesmith.x86_64.pallets_1776_click.fde47b4b:latest"
    assert record["setup_cmd"] == f"git checkout -q {row['instance_id']}" and record["bug_patch"] == bug
    _git(repo, "commit", "-q", "-m", "bug")
    _git(repo, "apply", "-", stdin=record["patch"])  # the fix undoes the bug exactly
    assert (repo / "m.py").read_text() == original and not (repo / "new.py").exists()
    assert reverse_patch(record["patch"]) == bug


def test_r2e_gym_gold_patch_and_expected_status(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("one\ntwo\nthree\n")
    parsed = {"old_commit_hash": "a" * 40, "new_commit_hash": "b" * 40, "commit_message": "fix",
              "commit_date": "2024-01-01T00:00:00", "file_diffs": [
                  {"old_file_content": "", "new_file_content": "",
                   "header": {"file": {"path": "pkg/a.py"}, "misc_line": None},
                   "minus_file": {"path": "a/pkg/a.py"}, "plus_file": {"path": "b/pkg/a.py"},
                   "hunks": [{"descriptor": {"old_range": {"start": 1, "length": 3},
                                             "new_range": {"start": 1, "length": 3}, "section": ""},
                              "line_group": {"all_lines": [{"content": "one", "type": "context"},
                                                           {"content": "two", "type": "deleted"},
                                                           {"content": "TWO", "type": "added"},
                                                           {"content": "three", "type": "context"}]}}]},
                  {"old_file_content": "", "new_file_content": "", "header": {"file": {"path": "tests/test_a.py"}},
                   "minus_file": {"path": "a/tests/test_a.py"}, "plus_file": {"path": "b/tests/test_a.py"},
                   "hunks": []}]}
    row = {"repo_name": "pillow", "docker_image": "namanjain12/pillow_final:abc", "commit_hash": "b" * 40,
           "parsed_commit_content": json.dumps(parsed), "problem_statement": "two should shout",
           "expected_output_json": json.dumps({"TestA.test_x": "PASSED", "TestA.test_y": "FAILED"})}
    src = write_jsonl(tmp_path / "r2e.jsonl", [row, {**row, "expected_output_json": "{}"}])
    report = import_pool("r2e-gym", src, tmp_path / "pool.jsonl")
    assert report.rejected == [f"{src}:2: field 'expected_output_json' must be a non-empty object of test -> status"]
    (record,) = read_pool(tmp_path / "pool.jsonl")
    assert record["repo"] == "python-pillow/Pillow" and record["FAIL_TO_PASS"] == ["TestA.test_x"]
    assert record["expected_status"]["TestA.test_y"] == "FAILED" and record["base_commit"] == "a" * 40
    assert "tests/test_a.py" not in record["patch"] == r2e_gold_patch(parsed)
    subprocess.run(["git", "apply", "-"], cwd=repo, input=record["patch"], text=True, check=True)
    assert (repo / "pkg" / "a.py").read_text() == "one\nTWO\nthree\n"
    (task,) = load_tasks(tmp_path / "pool.jsonl")
    assert task.expected_status == {"TestA.test_x": "PASSED", "TestA.test_y": "FAILED"}


def test_cli_import_reports_counts(tmp_path, capsys):
    src = write_jsonl(tmp_path / "v.jsonl", [swe_bench_row(), {"instance_id": "x"}, "not an object"])
    assert tasks_main(["import", "--format", "swe-bench", str(src), "--out", str(tmp_path / "p.jsonl"),
                       "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr()
    assert "imported=1 rejected=2" in out.out and f"{src}:3: not a JSON object" in out.err
    assert json.loads((tmp_path / "r.json").read_text())["rejected_rows"][0] == f"{src}:2: missing field 'repo'"
    assert tasks_main(["import", "--format", "swe-smith", str(src), "--out", str(tmp_path / "q.jsonl")]) == 1
