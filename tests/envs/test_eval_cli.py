"""`eval` (pass@k report from a class_path policy) and `tasks filter` (pass@k band + step budgets)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from north_lightning.cli.eval import load_config, main as eval_main
from north_lightning.cli.tasks import filter_tasks, main as tasks_main, pass_at_k
from north_lightning.envs.tasks import BUNDLED_DIR, TaskError, load_task_pool


def test_pass_at_k_estimator():
    assert pass_at_k(8, 0, 1) == 0.0 and pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 / 4) * (2 / 3))
    assert pass_at_k(4, 3, 2) == 1.0


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["x"], "policy": {"class_path": "a.B"}, "n_sample": 3}))
    with pytest.raises(ValueError, match=r"unknown eval config key\(s\) \['n_sample'\]"):
        load_config(str(path), [])
    path.write_text(yaml.safe_dump({"tasks": ["x"]}))
    with pytest.raises(ValueError, match="missing required key 'policy'"):
        load_config(str(path), [])
    cfg = load_config(None, ["tasks=x", "policy.class_path=a.B", "policy.init_args.model_dir=/m", "k=[1,4]"])
    assert cfg.policy == {"class_path": "a.B", "init_args": {"model_dir": "/m"}} and cfg.k == [1, 4]
    assert (cfg.temperature, cfg.top_p, cfg.seeds) == (1.0, 0.95, [0, 1, 2])


@pytest.mark.docker
@pytest.mark.slow
def test_eval_with_scripted_policy_writes_json_and_csv_then_filter(base_image, tmp_path, capsys):
    terminal = BUNDLED_DIR / "terminal"
    config = {
        "tasks": [str(terminal / "toy-arith-cbfa16cc"), str(BUNDLED_DIR / "swe" / "tasks.jsonl")],
        "policy": {"class_path": "north_lightning.rl.scripted_policy.OraclePolicy"},
        "harness": {"terminal": "mini_swe_agent", "swe": "swe_agent"},
        "n_samples": 2, "k": [1, 2], "seeds": [0, 1], "max_tokens_per_turn": 1024, "concurrency": 4,
        "transcripts": True, "out": str(tmp_path / "report"),
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    assert eval_main(["--config", str(tmp_path / "eval.yaml")]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[-1].startswith("pass@1=1.0000±0.0000 pass@2=1.0000")
    # pass@1 with its interval and how many episodes it rests on: 4 tasks x 2 samples x 2 seeds, all solved
    assert lines[-2] == "pass@1 = 1.000 (95% CI 0.81-1.00, Wilson; 16 episodes = 4 tasks x 2 samples x 2 seeds)"
    assert "[eval report] episode 16/16 pass 16/16" in captured.err  # the live progress line (stderr)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["pass@1"]["successes"] == report["summary"]["pass@1"]["episodes"] == 16
    assert report["summary"]["episodes"] == 4 * 2 * 2 and report["summary"]["end_reasons"] == {"submitted": 16}
    assert report["summary"]["pass@1"]["per_seed"] == [1.0, 1.0]
    assert {s["seed"] for s in report["tasks"][0]["samples"]} == {0, 1}
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert len(rows) == 4 and all(r["pass@1"] == "1.0000" for r in rows)
    transcripts = [json.loads(line) for line in open(tmp_path / "report.transcripts.jsonl")]
    assert len(transcripts) == 16 and all(t["reward"] == 1.0 and t["end_reason"] == "submitted" for t in transcripts)
    arith = [t for t in transcripts if t["task_id"] == "toy-arith-cbfa16cc"]
    assert len(arith) == 4 and {(t["seed"], t["sample"]) for t in arith} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    sources = [seg["source"] for seg in arith[0]["segments"]]
    assert sources[0] == "context" and "policy" in sources  # prompt first, then generated turns
    policy_text = "".join(seg["text"] for seg in arith[0]["segments"] if seg["source"] == "policy")
    assert "answer.txt" in policy_text  # the oracle's command, decoded from the generated token ids

    # filter: make one task never solved, one sometimes solved (inside the band), the rest always
    report["tasks"][0]["samples"] = [dict(s, reward=0.0) for s in report["tasks"][0]["samples"]]
    report["tasks"][1]["samples"][0]["reward"] = 0.0
    report["tasks"][1]["samples"][1]["steps"] = 4
    (tmp_path / "edited.json").write_text(json.dumps(report))
    assert tasks_main(["filter", str(tmp_path / "edited.json"), "--out", str(tmp_path / "pool.json"),
                       "--k", "1", "--low", "0.1", "--high", "0.9"]) == 0
    pool = json.loads((tmp_path / "pool.json").read_text())
    assert pool["dropped"] == {"listed": 0, "no_samples": 0, "infra_error": 0, "never_solved": 1, "too_hard": 0,
                               "too_easy": 2}
    assert [t["task_id"] for t in pool["kept"]] == [report["tasks"][1]["task_id"]]
    assert pool["kept"][0]["max_steps"] == 6  # ceil(1.5 x longest successful trajectory of 4 steps)
    (task,) = load_task_pool(tmp_path / "pool.json")
    assert task.task_id == "north-lightning__textstats-1" and task.kind == "swe" and task.max_steps == 6


def test_filter_counts_every_drop_reason(tmp_path):
    tasks = [{"task_id": "none", "samples": []},
             {"task_id": "hard", "samples": [{"reward": 1.0, "steps": 3}] + [{"reward": 0.0, "steps": 9}] * 19}]
    out = filter_tasks({"tasks": tasks}, low=0.1, high=0.9, k=1)
    assert out["dropped"] == {"listed": 0, "no_samples": 1, "infra_error": 0, "never_solved": 0, "too_hard": 1,
                              "too_easy": 0}
    assert out["counts"] == {"input": 2, "kept": 0}
    # --drop: a list of task ids (humaneval's flagged_task_ids.txt) dropped whatever their pass@k
    ok = {"task_id": "ok", "samples": [{"reward": 1.0, "steps": 2}, {"reward": 0.0, "steps": 5}]}
    (tmp_path / "report.json").write_text(json.dumps({"tasks": [ok, dict(ok, task_id="hacked")]}))
    (tmp_path / "flagged.txt").write_text("# flagged by humaneval\nhacked\n\n")
    assert tasks_main(["filter", str(tmp_path / "report.json"), "--out", str(tmp_path / "pool.json"), "--k", "1",
                       "--drop", str(tmp_path / "flagged.txt")]) == 0
    pool = json.loads((tmp_path / "pool.json").read_text())
    assert [t["task_id"] for t in pool["kept"]] == ["ok"] and pool["dropped"]["listed"] == 1


def test_task_pool_resolves_swe_records_and_checks_entries(tmp_path):
    jsonl = BUNDLED_DIR / "swe" / "tasks.jsonl"
    pool = {"kept": [{"task_id": "north-lightning__slugkit-1", "path": f"{jsonl}:3", "max_steps": 7},
                     {"task_id": "csv-revenue", "path": str(BUNDLED_DIR / "terminal" / "csv-revenue")}]}
    (tmp_path / "pool.json").write_text(json.dumps(pool))
    swe, terminal = load_task_pool(tmp_path / "pool.json")
    assert (swe.kind, swe.max_steps, terminal.kind, terminal.max_steps) == ("swe", 7, "terminal", 10)
    pool["kept"][0]["task_id"] = "nope"
    (tmp_path / "pool.json").write_text(json.dumps(pool))
    with pytest.raises(TaskError, match=r"kept\[0\]: 'nope' is not in"):
        load_task_pool(tmp_path / "pool.json")


def test_wilson_interval_and_pass1_line():
    from north_lightning.cli.eval import pass1_line, wilson_interval

    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)  # the textbook values for 5 / 10
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775  # not zero-width at 0 / n
    assert wilson_interval(64, 64)[1] == 1.0 and wilson_interval(64, 64)[0] > 0.94
    narrow, wide = wilson_interval(50, 100), wilson_interval(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    summary = {"pass@1": {"mean": 0.4375, "ci95": [0.32, 0.56], "episodes": 64}}
    assert pass1_line(summary, 16, 4, 1) == ("pass@1 = 0.438 (95% CI 0.32-0.56, Wilson; 64 episodes = 16 tasks x 4 "
                                             "samples x 1 seed)")
    summary["pass@1"]["episodes"] = 62  # two infrastructure failures are no samples: named, not hidden
    assert pass1_line(summary, 16, 4, 1).endswith("62 episodes = 16 tasks x 4 samples x 1 seed, less 2 "
                                                  "infrastructure failures)")
