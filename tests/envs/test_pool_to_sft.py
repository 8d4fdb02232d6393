"""Issue 21's pool-to-SFT path end to end, through the real CLIs and real Docker: a generated SWE-bench-format
pool (the bundled SWE instances of three repositories, written as `swebench` rows, plus one row of a SWE-bench
repository) -> `tasks import --format swe-bench` -> `tasks decontaminate` (the benchmark row dropped and listed)
-> `tasks split --sft-fraction` (whole repositories per side) -> `synth` with the replay teacher (a stand-in
that serves each task's oracle solution; the episodes run and are graded in fresh containers of the image the
pool names, built from the repository copy because no registry serves it) -> `data prepare` over the output.
"""

from __future__ import annotations

import json

import pytest

from helpers import REPLAY_KEY, ReplayTeacher

from north_lightning.envs.tasks import BUNDLED_DIR, load_tasks

SWE = BUNDLED_DIR / "swe"
SEED = 2  # with this seed and fraction 0.5 the three repositories land on both sides (asserted below)


def swebench_rows() -> list[dict]:
    """The bundled SWE instances as SWE-bench dataset rows (swebench 5.0.2 SWEbenchInstance: test lists as JSON
    strings, no image), and one row of django/django that decontamination must drop."""
    rows = []
    for line in (SWE / "tasks.jsonl").read_text().splitlines():
        task = json.loads(line)
        f2p, p2p = (t if isinstance(t, list) else json.loads(t) for t in (task["FAIL_TO_PASS"], task["PASS_TO_PASS"]))
        rows.append({"repo": task["repo"], "instance_id": task["instance_id"], "base_commit": task["base_commit"],
                     "patch": task["patch"], "test_patch": task["test_patch"],
                     "problem_statement": task["problem_statement"], "hints_text": "",
                     "created_at": "2026-01-01T00:00:00Z", "version": "1.0",
                     "FAIL_TO_PASS": json.dumps(f2p), "PASS_TO_PASS": json.dumps(p2p),
                     "environment_setup_commit": task["base_commit"]})
    django = dict(rows[0], repo="django/django", instance_id="django__django-99999",
                  problem_statement="QuerySet.union() drops the ordering of the first query",
                  FAIL_TO_PASS=json.dumps(["test_union_ordering (queries.test_qs_combinators.QuerySetSetOperationTests)"]))
    return rows + [django]


def tasks_cli(argv, capsys) -> str:
    from north_lightning.cli.tasks import main

    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.docker
def test_generated_pool_imports_decontaminates_splits_synthesises_and_prepares(base_image, tokenizer, tmp_path,
                                                                              capsys, monkeypatch):
    from north_lightning.__main__ import main
    from north_lightning.datamodules.prepare import PrepareConfig, prepare
    from north_lightning.datamodules.shards import ShardIndex
    from north_lightning.envs.session import configure_image_resolver
    from north_lightning.formats.records import iter_records

    rows = swebench_rows()
    bundled_ids = [r["instance_id"] for r in rows[:-1]]
    assert len({r["repo"] for r in rows[:-1]}) >= 3
    src = tmp_path / "swebench.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # import: every row, the image named as SWE-bench names it
    tasks_cli(["import", "--format", "swe-bench", str(src), "--out", str(tmp_path / "pool.jsonl"),
               "--report", str(tmp_path / "import.json")], capsys)
    imported = json.loads((tmp_path / "import.json").read_text())
    assert (imported["imported"], imported["rejected"], imported["duplicates"]) == (4, 0, 0), imported
    pool = [json.loads(line) for line in (tmp_path / "pool.jsonl").read_text().splitlines()]
    assert [p["image"] for p in pool[:3]] == [f"swebench/sweb.eval.x86_64.{i.replace('__', '_1776_')}:latest"
                                              for i in bundled_ids]

    # decontaminate: the SWE-bench repository's row is dropped and listed by id and reason
    out = tasks_cli(["decontaminate", str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "clean.jsonl")], capsys)
    assert "input=4 kept=3 dropped=1 repo:swe-bench=1" in out, out
    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text())
    assert report["dropped_ids"] == {"django__django-99999": "repo:swe-bench"}
    clean = [json.loads(line)["instance_id"] for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert clean == bundled_ids

    # split: whole repositories per side, counted
    split_dir = tmp_path / "split"
    out = tasks_cli(["split", str(tmp_path / "clean.jsonl"), "--sft-fraction", "0.5", "--seed", str(SEED),
                     "--out-dir", str(split_dir)], capsys)
    summary = json.loads((split_dir / "split.json").read_text())
    counts = summary["counts"]
    assert f"seed={SEED} " in out and summary["seed"] == SEED
    assert counts["sft_instances"] + counts["rl_instances"] == 3 and counts["sft_repos"] + counts["rl_repos"] == 3
    assert counts["sft_repos"] >= 1 and counts["rl_repos"] >= 1, counts
    # the split's pools load as tasks; their repository copies (the image recipes) sit beside them, as for any pool
    (split_dir / "repos").symlink_to(SWE / "repos")
    sides = {side: load_tasks(split_dir / f"{side}.jsonl") for side in ("sft", "rl")}
    assert [len(sides["sft"]), len(sides["rl"])] == [counts["sft_instances"], counts["rl_instances"]]
    assert not {t.repo for t in sides["sft"]} & {t.repo for t in sides["rl"]}
    assert all(summary["repos"][t.repo] == side for side, tasks in sides.items() for t in tasks)
    sft_tasks = sides["sft"]
    assert all(t.repo_dir is not None and t.image.startswith("swebench/") for t in sft_tasks)

    # synth over the SFT side: no registry serves swebench/... here (never pulled), the recipe builds each image
    configure_image_resolver(pull_policy="never", record_path=tmp_path / "images.json")
    monkeypatch.setenv("SYNTH_POOL_KEY", REPLAY_KEY)
    teacher = ReplayTeacher(tokenizer, "swe_agent", sft_tasks)
    synth_out = tmp_path / "synth"
    try:
        assert main(["synth", "--teacher", teacher.url, "--model", "oracle", "--api-key-env", "SYNTH_POOL_KEY",
                     "--tasks", str(split_dir / "sft.jsonl"), "--harness", "swe_agent", "--max-context", "4096",
                     "--concurrency", "2", "--out", str(synth_out)]) == 0, capsys.readouterr().err
    finally:
        teacher.close()
        configure_image_resolver()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    n = len(sft_tasks)
    assert last == (f"episodes={n} rewarded={n} not_rewarded=0 infra_error=0 duplicates=0 filtered=0 kept={n} "
                    "shards=1"), last
    resolved = json.loads((tmp_path / "images.json").read_text())
    assert sorted(resolved) == sorted(t.image for t in sft_tasks)  # the names the pool gives, each built once
    assert {r["source"] for r in resolved.values()} == {"built"}, resolved
    records = [r for r, _ in iter_records(sorted(synth_out.glob("synth-*.parquet")), on_error="fail")]
    assert sorted(r.meta["task_id"] for r in records) == sorted(t.task_id for t in sft_tasks)
    by_id = {t.task_id: t for t in sft_tasks}
    for record in records:
        task = by_id[record.meta["task_id"]]
        assert record.verified and record.meta["reward"] == 1.0 and record.meta["harness"] == "swe_agent"
        assert set(record.meta["tests"]) == set(task.fail_to_pass + task.pass_to_pass)
        assert set(record.meta["tests"].values()) == {"passed"}

    # data prepare: the shards hold those documents, with trainable tokens
    comps = [{"name": "synth", "paths": [str(synth_out / "synth-*.parquet")], "harness": "swe_agent",
              "share": 1.0, "verified_only": True}]
    index = ShardIndex.load(prepare(PrepareConfig({"components": comps}, seq_len=4096,
                                                  out_dir=str(tmp_path / "prepared"))))
    meta = index.meta
    assert meta["filters"]["dropped_total"] == {} and not meta["bad_records"], meta["filters"]
    (component,) = meta["components"]
    assert component["documents"] + component["val_documents"] == n and component["trainable_tokens"] > 0, component
    assert index.rows() > 0 and index.stats()[:, 0].sum() > 0  # train rows carry the component's loss tokens
