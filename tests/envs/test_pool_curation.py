"""`tasks decontaminate` (benchmark repository lists with source and date, identity normalisation, 13-gram
overlap, a report per reason with the dropped ids) and `tasks split` (whole repositories per side, seeded,
deterministic, checked)."""

from __future__ import annotations

import json

import pytest

from north_lightning.cli.tasks import main as tasks_main
from north_lightning.envs.decontamination import available_lists, load_benchmark_list, normalize_repo
from north_lightning.envs.pool_split import check_split, split_pool
from north_lightning.envs.tasks import TaskError

ISSUE = ("When the session cookie expires during a long upload the client retries forever instead of "
         "refreshing the token and resuming the transfer from the last acknowledged chunk")


def record(iid: str, repo: str, statement: str = "something is broken") -> dict:
    return {"instance_id": iid, "repo": repo, "base_commit": "a" * 40, "patch": "p", "test_patch": "",
            "problem_statement": statement, "FAIL_TO_PASS": ["t::a"], "PASS_TO_PASS": [], "image": "i:1"}


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("raw, expected", [
    ("django/django", "django/django"), ("Django/Django", "django/django"),
    ("https://github.com/django/django.git", "django/django"), ("git@github.com:django/django.git", "django/django"),
    ("github.com/django/django/", "django/django"), ("django__django", "django/django"),
    ("PyCQA/pylint", "pylint-dev/pylint"), ("https://github.com/kennethreitz/requests", "psf/requests"),
    ("ssh://git@github.com/Encode/HTTPX", "encode/httpx"),
])
def test_repo_identity_normalisation(raw, expected):
    assert normalize_repo(raw) == expected


def test_shipped_lists_name_source_and_date():
    assert set(available_lists()) >= {"swe-bench", "swe-bench-verified", "swe-bench-pro"}
    lists = {name: load_benchmark_list(name) for name in available_lists()}
    for bench in lists.values():
        assert bench.source and bench.date and len(bench.repos) >= 10
    assert lists["swe-bench-verified"].repos <= lists["swe-bench"].repos
    assert "ansible/ansible" in lists["swe-bench-pro"].repos and "nodebb/nodebb" in lists["swe-bench-pro"].repos
    with pytest.raises(TaskError, match="no benchmark repository list 'swe-bench-ultra'"):
        load_benchmark_list("swe-bench-ultra")


def test_decontaminate_reports_each_reason_and_the_dropped_ids(tmp_path, capsys):
    pool = write(tmp_path / "pool.jsonl", [
        record("a-1", "https://github.com/Django/django.git"), record("a-2", "PyCQA/pylint"),
        record("a-3", "ansible/ansible"), record("a-4", "encode/httpx", f"Bug report. {ISSUE}. Thanks!"),
        record("a-5", "encode/httpx", " ".join(ISSUE.split()[:12]) + " and more words after that"),
        record("a-6", "git@github.com:pallets/click.git"),
    ])
    instances = write(tmp_path / "bench.jsonl", [{"instance_id": "b-1", "problem_statement": ISSUE.upper()}])
    assert tasks_main(["decontaminate", str(pool), "--against", "swe-bench,swe-bench-verified,swe-bench-pro",
                       "--instances", str(instances), "--out", str(tmp_path / "clean.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "input=6 kept=2 dropped=4 ngram:13=1 repo:swe-bench=2 repo:swe-bench-pro=1" in out
    assert "list swe-bench-pro: scaleapi/SWE-bench_Pro-os" in out
    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text())
    assert report["dropped_ids"] == {"a-1": "repo:swe-bench", "a-2": "repo:swe-bench",
                                     "a-3": "repo:swe-bench-pro", "a-4": "ngram:13"}
    kept = [json.loads(line)["instance_id"] for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert kept == ["a-5", "a-6"]  # 12 shared words are not a 13-gram
    write(tmp_path / "bad.jsonl", [{"instance_id": "x"}])
    assert tasks_main(["decontaminate", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "bad.jsonl:1: not a pool record" in capsys.readouterr().err


def test_split_keeps_repositories_whole_and_is_deterministic(tmp_path, capsys):
    records = [record(f"r{r}-{i}", f"Org{r}/Repo{r}" if i % 2 else f"org{r}/repo{r}") for r in range(30)
               for i in range(3)]
    pool = write(tmp_path / "pool.jsonl", records)
    assert tasks_main(["split", str(pool), "--sft-fraction", "0.3", "--seed", "7",
                       "--out-dir", str(tmp_path / "a")]) == 0
    assert "seed=7 sft_instances=" in capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "split.json").read_text())
    counts = summary["counts"]
    assert summary["seed"] == 7 and summary["sft_fraction"] == 0.3
    assert counts["sft_instances"] + counts["rl_instances"] == 90 and counts["sft_repos"] + counts["rl_repos"] == 30
    assert counts["sft_instances"] == 3 * counts["sft_repos"] and 3 <= counts["sft_repos"] <= 16
    again = split_pool(pool, tmp_path / "b", sft_fraction=0.3, seed=7)
    assert again["repos"] == summary["repos"]
    assert (tmp_path / "a" / "sft.jsonl").read_text() == (tmp_path / "b" / "sft.jsonl").read_text()
    assert split_pool(pool, tmp_path / "c", sft_fraction=0.3, seed=8)["repos"] != summary["repos"]
    # the side of a repository does not depend on the others: a sub-pool splits the same way
    write(tmp_path / "sub.jsonl", records[:30])
    sub = split_pool(tmp_path / "sub.jsonl", tmp_path / "d", sft_fraction=0.3, seed=7)
    assert all(summary["repos"][repo] == side for repo, side in sub["repos"].items())
    assert split_pool(pool, tmp_path / "e", sft_fraction=0.0)["counts"]["sft_instances"] == 0
    assert split_pool(pool, tmp_path / "f", sft_fraction=1.0)["counts"]["rl_instances"] == 0
    # the check catches a repository on both sides
    sft_repo = next(repo for repo, side in summary["repos"].items() if side == "sft")
    with open(tmp_path / "a" / "rl.jsonl", "a") as fh:
        fh.write(json.dumps(record("x", f"https://github.com/{sft_repo.upper()}")) + "\n")
    with pytest.raises(TaskError, match="share repositories"):
        check_split(tmp_path / "a" / "sft.jsonl", tmp_path / "a" / "rl.jsonl")
    with pytest.raises(TaskError, match=r"sft-fraction must lie in \[0, 1\]"):
        split_pool(pool, tmp_path / "g", sft_fraction=1.5)


def test_import_decontaminate_split_flow_gives_loadable_pools(tmp_path, capsys):
    rows = [dict(record(f"{owner}__{name}-{i}", f"{owner}/{name}"), FAIL_TO_PASS=json.dumps(["t.py::a"]),
                 PASS_TO_PASS="[]", version="1.0") for owner, name in
            [("django", "django"), ("encode", "httpx"), ("pallets", "click"), ("psf", "black"), ("tiangolo", "typer")]
            for i in range(2)]
    for row in rows:
        del row["image"]  # SWE-bench rows name no image: the importer derives it
    src = write(tmp_path / "rows.jsonl", rows)
    assert tasks_main(["import", "--format", "swe-bench", str(src), "--out", str(tmp_path / "pool.jsonl")]) == 0
    assert tasks_main(["decontaminate", str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "clean.jsonl")]) == 0
    assert tasks_main(["split", str(tmp_path / "clean.jsonl"), "--sft-fraction", "0.5",
                       "--out-dir", str(tmp_path / "split")]) == 0
    assert "input=10 kept=8 dropped=2 repo:swe-bench=2" in capsys.readouterr().out
    from north_lightning.envs.tasks import load_tasks

    sides = {side: load_tasks(tmp_path / "split" / f"{side}.jsonl") for side in ("sft", "rl")}
    assert sum(len(tasks) for tasks in sides.values()) == 8
    assert not {t.repo for t in sides["sft"]} & {t.repo for t in sides["rl"]}
    assert all(t.image.startswith("swebench/sweb.eval.x86_64.") for tasks in sides.values() for t in tasks)
