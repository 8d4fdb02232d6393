"""`data import`: each upstream format round-trips (import → render through the matching harness → parse every
assistant turn → the source's actions), and every dropped item is counted with its file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datamodules.importers import upstream_samples as S

from north_lightning.datamodules.importers import REPORT_NAME, import_trajectories
from north_lightning.formats.harnesses import Action, get_harness
from north_lightning.formats.records import iter_records


def _records(out: Path):
    return [r for r, _ in iter_records(sorted(out.glob("*.parquet")), on_error="fail")]


def _report(out: Path, source: str) -> dict:
    return json.loads((out / REPORT_NAME.format(source=source)).read_text())


def _roundtrip(record, harness_name: str | None = None):
    """The canonical actions recovered from the record rendered through its harness."""
    harness = get_harness(record.harness or harness_name)
    actions = []
    for message in harness.render(record, seed=3):
        if message["role"] == "assistant":
            action = harness.parse(message if harness.tools() is not None else message["content"])
            assert isinstance(action, Action), (harness.name, message, action)
            actions.append([(c.name, c.arguments) for c in harness.canonical(action)])
    return actions


def _drops(report: dict, reason: str) -> list[str]:
    return report["examples"][reason]


# -- SWE-agent ----------------------------------------------------------------------------------------------
def test_swe_agent_traj_function_calling_and_thought_action(tmp_path):
    src = tmp_path / "trajs"
    src.mkdir()
    (src / "calc__add-1.traj").write_text(json.dumps(S.swe_agent_fc_traj()))
    (src / "old.traj").write_text(json.dumps(S.swe_agent_thought_action_traj()))
    (src / "cost.traj").write_text(json.dumps(S.swe_agent_thought_action_traj("submitted (exit_cost)")))
    (src / "broken.traj").write_text("{not json")
    report = import_trajectories("swe-agent", src, tmp_path / "out")
    assert (report.kept, report.dropped["truncated"], report.dropped["malformed"]) == (2, 1, 1)
    r = _report(tmp_path / "out", "swe_agent")
    assert r["total"] == 4 and any("cost.traj" in e and "exit_cost" in e for e in _drops(r, "truncated"))
    assert any("broken.traj" in e for e in _drops(r, "malformed"))
    fc, old = sorted(_records(tmp_path / "out"), key=lambda rec: rec.meta["function_calling"], reverse=True)
    assert fc.harness == "swe_agent" and fc.task == S.PR and fc.id.startswith("calc__add-1#")
    assert fc.meta["review_submits"] == 1 and fc.steps[0].observations[0].output == "/testbed/calc.py:1:def add(a, b):\n"
    assert _roundtrip(fc) == S.SWE_FC_ACTIONS
    assert old.harness is None and old.task == S.PR and old.steps[1].observations[0].output == ""
    assert _roundtrip(old, "swe_agent") == S.SWE_TA_ACTIONS


def test_swe_agent_dataset_rows_jsonl_saved_dataset_and_hf(tmp_path):
    import datasets

    rows = [S.swe_agent_row(), S.swe_agent_row(target=False, instance="b-2"),
            S.swe_agent_row(first_action="open calc.py", instance="c-3"),
            S.swe_agent_row(exit_status="exit_context", instance="d-4")]
    src = S.write_jsonl(tmp_path / "rows" / "train.jsonl", rows, extra_lines=('{"instance_id": ',))
    report = import_trajectories("swe-agent", src, tmp_path / "out")
    assert report.kept == 1 and report.dropped == {"unresolved": 1, "truncated": 1, "unsupported_tool": 1, "malformed": 1}
    r = _report(tmp_path / "out", "swe_agent")
    assert any(e.startswith(f"{src}:2: target is False") for e in _drops(r, "unresolved"))
    assert any(e.startswith(f"{src}:3:") and "'open'" in e for e in _drops(r, "unsupported_tool"))
    assert any(e.startswith(f"{src}:5: malformed JSON line") for e in _drops(r, "malformed"))
    (record,) = _records(tmp_path / "out")
    assert record.verified and record.meta["model"] == "swe-agent-llama-70b"
    assert record.steps[0].observations[0].output == "calc.py\nreproduce.py"  # SWE-agent's state lines removed
    assert _roundtrip(record, "swe_agent") == S.SWE_ROW_ACTIONS
    # --include-unresolved keeps the failed attempt, marked
    report = import_trajectories("swe-agent", src, tmp_path / "out2", include_unresolved=True)
    assert report.kept == 2 and report.kept_unresolved == 1
    assert sorted(r.verified for r in _records(tmp_path / "out2")) == [False, True]
    # the same rows from a save_to_disk directory and through datasets.load_dataset on a local directory
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    saved = import_trajectories("swe-agent", tmp_path / "saved", tmp_path / "out3")
    assert (saved.kept, saved.total) == (1, 4) and any(":row 1" in e for e in saved.examples["unresolved"])
    parquet_dir = tmp_path / "hub_like"
    parquet_dir.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(parquet_dir / "train-00000-of-00001.parquet"))
    hub = import_trajectories("swe-agent", str(parquet_dir), tmp_path / "out4", hf=True)
    assert (hub.kept, hub.total) == (1, 4)
    assert [r.steps for r in _records(tmp_path / "out4")] == [record.steps]


# -- mini-SWE-agent -------------------------------------------------------------------------------------------
def test_mini_swe_agent_v1_and_v2(tmp_path):
    src = tmp_path / "runs"
    (src / "calc__add-1").mkdir(parents=True)
    (src / "calc__add-1" / "calc__add-1.traj.json").write_text(json.dumps(S.mini_v1_traj()))
    (src / "v2.traj.json").write_text(json.dumps(S.mini_v2_traj()))
    (src / "limits.traj.json").write_text(json.dumps(S.mini_v1_traj("LimitsExceeded")))
    report = import_trajectories("mini-swe-agent", src, tmp_path / "out")
    assert (report.kept, report.dropped["truncated"]) == (2, 1)
    records = {r.harness: r for r in _records(tmp_path / "out")}
    v1, v2 = records["mini_swe_agent"], records["mini_swe_agent_v2"]
    assert v1.task == S.PR and v1.meta["format_errors"] == 1 and v1.id.startswith("calc__add-1#")
    assert v1.steps[-1].observations[0].output.startswith("COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\ndiff --git")
    assert _roundtrip(v1) == S.MINI_V1_ACTIONS
    assert v2.steps[0].observations[0].output == "x = 1\n" * 2500  # the raw output, not the elided message
    assert _roundtrip(v2) == S.MINI_V2_ACTIONS
    # the submitting command decides by its output, as upstream: the harness ends the episode on it
    harness = get_harness("mini_swe_agent_v2")
    last = v2.steps[-1]
    assert harness.submission(last.calls[0], last.observations[0].output, 0) == "Task completed successfully\n"


# -- OpenHands ------------------------------------------------------------------------------------------------
def test_openhands_swe_gym_rows(tmp_path):
    rows = [S.openhands_row(), S.openhands_row(resolved=False), S.openhands_row(extra_tool="browser")]
    src = S.write_jsonl(tmp_path / "oh.jsonl", rows)
    report = import_trajectories("openhands", src, tmp_path / "out")
    assert report.kept == 1 and report.dropped["unresolved"] == 1 and report.dropped["unsupported_tool"] == 1
    assert any(e.startswith(f"{src}:3:") and "'browser'" in e for e in report.examples["unsupported_tool"])
    (record,) = _records(tmp_path / "out")
    assert record.harness == "swe_agent" and record.task == S.PR and record.verified
    assert record.steps[0].thought == "Let me find the code.\nThe bug is probably the operator."
    assert record.steps[0].observations[0].output == "2:    return a - b\n[Python Interpreter: /usr/bin/python]\nroot@runtime:/workspace/calc # "
    assert record.steps[0].observations[0].exit_code == 0
    assert _roundtrip(record) == S.OPENHANDS_ACTIONS


# -- Harbor ---------------------------------------------------------------------------------------------------
def test_harbor_terminus2_trial_dirs(tmp_path):
    job = tmp_path / "jobs" / "2025-01-01__00-00-00"
    S.write_harbor_trial(job, "sum-task__aaa")
    S.write_harbor_trial(job, "sum-task__bbb", reward=0.0)
    S.write_harbor_trial(job, "sum-task__ccc", exception="AgentTimeoutError")
    S.write_harbor_trial(job, "sum-task__ddd", raw=True, parser="xml")
    S.write_harbor_trial(job, "sum-task__eee", raw=True)
    (job / "sum-task__fff" / "agent").mkdir(parents=True)
    (job / "sum-task__fff" / "result.json").write_text("[]")
    report = import_trajectories("harbor", tmp_path / "jobs", tmp_path / "out")
    assert report.kept == 3
    assert report.dropped == {"unresolved": 1, "truncated": 1, "unsupported_tool": 0, "malformed": 1}
    assert any("sum-task__ccc" in e and "AgentTimeoutError" in e for e in report.examples["truncated"])
    assert any("sum-task__fff" in e for e in report.examples["malformed"])
    records = {r.id: r for r in _records(tmp_path / "out")}
    expected = S.HARBOR_ACTIONS + [[("submit", {})]]  # Terminus-2 confirms completion a second time
    assert records["sum-task__aaa"].task == "Write the sum of 17 and 25 to /app/answer.txt"
    assert records["sum-task__aaa"].harness == "terminus2" and _roundtrip(records["sum-task__aaa"]) == expected
    # the commands are kept as sent, durations included
    assert records["sum-task__aaa"].steps[0].calls[0].arguments == {
        "keystrokes": "echo $((17 + 25)) > /app/answer.txt\n", "duration": 0.1}
    assert records["sum-task__ddd"].harness == "terminus2_xml" and _roundtrip(records["sum-task__ddd"]) == expected
    assert _roundtrip(records["sum-task__eee"]) == expected
    # Harbor's one screen per reply is cut into each command's output; the harness renders prompt and command
    assert [o.output for o in records["sum-task__aaa"].steps[0].observations] == ["", "42\n"]
    screen = get_harness("terminus2").render(records["sum-task__aaa"])[2]["content"]
    assert screen.count("cat /app/answer.txt") == 1 and screen.endswith("42\nroot@sandbox:/app# ")
    outputs = [o.output for r in records.values() for st in r.steps for o in st.observations]
    assert not any("Are you sure" in o or o.startswith("Current terminal state") for o in outputs)
    assert records["sum-task__aaa"].steps[0].thought == "Fresh shell.\ngo"  # "Analysis: ...\nPlan: ..." read back


# -- generic messages -----------------------------------------------------------------------------------------
def test_messages_jsonl(tmp_path):
    unsupported = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "",
                   "tool_calls": [S._tc("z", "web_search", {"q": "x"})]}, {"role": "tool", "tool_call_id": "z", "content": ""}]}
    cut = S.messages_bash_row()
    cut["messages"] = cut["messages"][:4]  # c2 never answered
    src = S.write_jsonl(tmp_path / "chat.jsonl", [S.messages_bash_row(), S.messages_opencode_row(),
                                                   S.messages_bash_row(reward=0.0) | {"id": "zero"}, unsupported, cut])
    report = import_trajectories("messages", src, tmp_path / "out")
    assert report.kept == 2
    assert report.dropped == {"unresolved": 1, "truncated": 1, "unsupported_tool": 1, "malformed": 0}
    assert any(e.startswith(f"{src}:4:") and "web_search" in e for e in report.examples["unsupported_tool"])
    records = {r.harness: r for r in _records(tmp_path / "out")}
    assert _roundtrip(records[None], "mini_swe_agent") == S.MESSAGES_BASH_ACTIONS
    assert _roundtrip(records[None], "swe_agent") == S.MESSAGES_BASH_ACTIONS
    assert records["opencode"].response == "Fixed the typo."
    assert _roundtrip(records["opencode"]) == S.MESSAGES_OPENCODE_ACTIONS


def test_unknown_format_and_missing_source(tmp_path):
    with pytest.raises(ValueError, match="unknown import format 'sweagent'"):
        import_trajectories("sweagent", tmp_path, tmp_path / "o")
    with pytest.raises(ValueError, match="source name '../x'"):
        import_trajectories("messages", tmp_path, tmp_path / "o", source="../x")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        import_trajectories("messages", tmp_path / "nope.jsonl", tmp_path / "o")


def test_cli_data_import(tmp_path, capsys):
    from north_lightning.__main__ import main

    src = S.write_jsonl(tmp_path / "rows.jsonl", [S.swe_agent_row(), S.swe_agent_row(target=False, instance="b")])
    assert main(["data", "import", "--format", "swe-agent", str(src), "--out", str(tmp_path / "o"),
                 "--include-unresolved"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "kept=2 dropped=0 unresolved=0 truncated=0 unsupported_tool=0 malformed=0 shards=1"
    assert _report(tmp_path / "o", "swe_agent")["kept_unresolved"] == 1
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["import_report-swe_agent.json", "swe_agent-00000.parquet"]
    # another source into the same directory keeps the first one's shards
    assert main(["data", "import", "--format", "messages", str(S.write_jsonl(tmp_path / "m.jsonl", [S.messages_bash_row()])),
                 "--out", str(tmp_path / "o"), "--source", "chats"]) == 0
    assert len(list((tmp_path / "o").glob("*.parquet"))) == 2 and len(_records(tmp_path / "o")) == 3


def test_saved_dataset_dict_needs_a_split(tmp_path):
    import datasets

    rows = [S.messages_bash_row()]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)}
                         ).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="several splits \\(train, test\\); choose one with --split"):
        import_trajectories("messages", tmp_path / "dd", tmp_path / "o")
    assert import_trajectories("messages", tmp_path / "dd", tmp_path / "o", split="test").kept == 1
    with pytest.raises(ValueError, match="no split 'dev'"):
        import_trajectories("messages", tmp_path / "dd", tmp_path / "o", split="dev")
    with pytest.raises(ValueError, match="reads directories; it cannot come from --hf"):
        import_trajectories("harbor", "org/name", tmp_path / "o", hf=True)


def test_imported_records_pass_the_sft_filters_in_every_harness_that_selects_them(tmp_path):
    """What `data import` writes is trainable as is: every record renders, tokenises and passes the SFT
    filters (valid tool calls, whitespace, grounding) in each agent harness component that selects it."""
    from north_lightning.datamodules.prepare import PrepareConfig, prepare
    from north_lightning.datamodules.shards import ShardIndex
    from north_lightning.formats.harnesses import AGENT_HARNESSES

    (tmp_path / "swe").mkdir()
    (tmp_path / "swe" / "a.traj").write_text(json.dumps(S.swe_agent_fc_traj()))
    (tmp_path / "swe" / "b.traj").write_text(json.dumps(S.swe_agent_thought_action_traj()))
    out = tmp_path / "out"
    import_trajectories("swe-agent", tmp_path / "swe", out)
    import_trajectories("swe-agent", S.write_jsonl(tmp_path / "rows.jsonl", [S.swe_agent_row()]), out, source="rows")
    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "x.traj.json").write_text(json.dumps(S.mini_v1_traj()))
    (tmp_path / "mini" / "y.traj.json").write_text(json.dumps(S.mini_v2_traj()))
    import_trajectories("mini-swe-agent", tmp_path / "mini", out)
    import_trajectories("openhands", S.write_jsonl(tmp_path / "oh.jsonl", [S.openhands_row()]), out)
    S.write_harbor_trial(tmp_path / "job", "t1")
    S.write_harbor_trial(tmp_path / "job", "t2", raw=True, parser="xml")
    import_trajectories("harbor", tmp_path / "job", out)
    import_trajectories("messages", S.write_jsonl(tmp_path / "m.jsonl", [S.messages_bash_row(), S.messages_opencode_row()]), out)
    assert len(_records(out)) == 10
    comps = [{"name": h, "paths": [str(out / "*.parquet")], "harness": h, "share": 1 / len(AGENT_HARNESSES)}
             for h in AGENT_HARNESSES]
    meta = ShardIndex.load(prepare(PrepareConfig({"components": comps}, seq_len=8192, out_dir=str(tmp_path / "p")))).meta
    report = meta["filters"]
    assert report["dropped_total"] == {} and not meta["bad_records"], report
    assert all(c["documents"] >= 3 for c in meta["components"]), [c["documents"] for c in meta["components"]]
