"""Parsers of the mini-SWE-agent and OpenCode harnesses."""

from __future__ import annotations

import json

from north_lightning.formats.harnesses import Action, FormatError, ToolCall, get_harness
from north_lightning.formats.harnesses.mini_swe_agent import is_submission_output, observation_text


def test_mini_exactly_one_bash_block():
    h = get_harness("mini_swe_agent")
    act = h.parse("THOUGHT: look around.\n\n```bash\nls -la && cat a.txt\n```\n")
    assert act == Action((ToolCall("bash", {"command": "ls -la && cat a.txt"}),), "look around.")
    for text, n, reason in [("no block", 0, "no_action"), ("```bash\nls\n```\n```bash\npwd\n```", 2, "multiple_actions"),
                            ("```python\nprint(1)\n```", 0, "no_action")]:
        err = h.parse(text)
        assert isinstance(err, FormatError) and err.reason == reason
        assert err.message.startswith(f"Please always provide EXACTLY ONE action in triple backticks, found {n} actions.")


def test_mini_submission():
    h = get_harness("mini_swe_agent")
    act = h.parse("Done.\n```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n```")
    # the command `render` writes for submit{} maps back to it; it ends the episode only once run
    assert not act.submit and h.canonical(act) == [ToolCall("submit", {})]
    act = h.parse("Done.\n```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff\n```")
    assert h.canonical(act) == [act.tool_calls[0]]
    assert is_submission_output("COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\ndiff --git a b\n")
    assert not is_submission_output("hello\nCOMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT")


def test_mini_observation_elision():
    assert observation_text("hi\n", 1) == "<returncode>1</returncode>\n<output>\nhi\n</output>"
    text = "H" * 6000 + "M" * 2000 + "T" * 6000
    obs = observation_text(text, 0)
    assert "<warning>" in obs and "4000 characters elided" in obs
    head = obs.split("<output_head>\n")[1].split("\n</output_head>")[0]
    tail = obs.split("<output_tail>\n")[1].split("\n</output_tail>")[0]
    assert head == "H" * 5000 and tail == "T" * 5000 and "M" not in obs
    assert len(observation_text("x" * 9_999, 0)) < 10_100  # under the limit: not elided
    assert "0 characters elided" in observation_text("x" * 10_000, 0)  # upstream elides from `length < 10000` on


def _call(name, args, cid="c"):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def test_opencode_typed_tools_camel_case():
    h = get_harness("opencode")
    msg = {"role": "assistant", "content": "Fix the typo.", "tool_calls": [
        _call("read", {"filePath": "/app/a.py", "offset": 10, "limit": 20}, "c1"),
        _call("edit", {"filePath": "/app/a.py", "oldString": "teh", "newString": "the", "replaceAll": True}, "c2")]}
    act = h.parse(msg)
    assert [c.name for c in act.tool_calls] == ["read", "edit"] and not act.submit
    assert act.tool_calls[1].arguments["replaceAll"] is True
    todo = {"todos": [{"content": "fix", "status": "pending", "priority": "high", "id": "1"}]}
    assert isinstance(h.parse({"tool_calls": [_call("todowrite", todo)]}), Action)
    # snake_case is not OpenCode's schema
    assert h.parse({"tool_calls": [_call("read", {"file_path": "/a"})]}).reason == "missing_argument"
    assert isinstance(h.parse({"tool_calls": [_call("bash", {"command": "ls"})]}), Action)  # no description today
    assert h.parse({"tool_calls": [_call("edit", {"filePath": "/a", "oldString": "a", "newString": "b",
                                                  "replaceAll": "yes"})]}).reason == "bad_argument_type"
    assert h.parse({"tool_calls": [_call("submit", {})]}).reason == "unknown_tool"
    final = h.parse({"role": "assistant", "content": "All done."})
    assert final.submit and final.tool_calls == () and final.thought == "All done."


def test_opencode_results_are_the_output_text():
    """OpenCode hands the model a completed tool's output text (`{type: "text", value: part.state.output}`),
    not its UI metadata."""
    h = get_harness("opencode")
    msg = h.format_observation(ToolCall("bash", {"command": "ls", "description": "List"}, "c7"), "a\n", 0)
    assert msg == {"role": "tool", "tool_call_id": "c7", "name": "bash", "content": "a\n"}
