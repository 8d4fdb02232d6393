"""Parsers of the SWE-agent and Terminus-2 harnesses: the responses RL rollouts will feed them."""

from __future__ import annotations

import json

import pytest

from north_lightning.formats.harnesses import Action, FormatError, ToolCall, get_harness


def _native(name, args, content="thinking"):
    raw = args if isinstance(args, str) else json.dumps(args)
    return {"role": "assistant", "content": content, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": name, "arguments": raw}}]}


def test_unknown_harness_lists_known_names():
    with pytest.raises(ValueError, match="unknown harness 'swe-agent'.*swe_agent"):
        get_harness("swe-agent")


def test_swe_agent_native_calls():
    h = get_harness("swe_agent")
    act = h.parse(_native("bash", {"command": "ls -la"}))
    assert isinstance(act, Action) and act.tool_calls == (ToolCall("bash", {"command": "ls -la"}, "c1"),)
    assert act.thought == "thinking" and not act.submit
    act = h.parse(_native("str_replace_editor", {"command": "view", "path": "/testbed/a.py", "view_range": [1, 5]}))
    assert act.tool_calls[0].arguments["view_range"] == [1, 5]
    assert h.parse(_native("submit", {})).submit


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("python", {"code": "1"}, "unknown_tool"),
        ("bash", "{not json", "bad_json"),
        ("bash", {}, "missing_argument"),
        ("str_replace_editor", {"command": "delete", "path": "/a"}, "bad_argument_value"),
        ("str_replace_editor", {"command": "create", "path": "/a"}, "missing_argument"),
        ("str_replace_editor", {"command": "insert", "path": "/a", "new_str": "x", "insert_line": "3"},
         "bad_argument_type"),
        ("bash", {"command": "ls", "cwd": "/"}, "unknown_argument"),
    ],
)
def test_swe_agent_native_errors(name, args, reason):
    err = get_harness("swe_agent").parse(_native(name, args))
    assert isinstance(err, FormatError) and err.reason == reason, err


def test_swe_agent_requires_exactly_one_call():
    h = get_harness("swe_agent")
    two = _native("bash", {"command": "ls"})
    two["tool_calls"].append(two["tool_calls"][0])
    assert h.parse(two).reason == "multiple_actions"
    assert h.parse({"role": "assistant", "content": "I am done"}).reason == "no_action"


def test_swe_agent_xml_variant():
    h = get_harness("swe_agent_xml")
    text = ("Let me look.\n\n<function=str_replace_editor>\n<parameter=command>insert</parameter>\n"
            "<parameter=path>/testbed/x.py</parameter>\n<parameter=insert_line>4</parameter>\n"
            "<parameter=new_str>    return 1\n</parameter>\n</function>")
    act = h.parse(text)
    assert act.thought == "Let me look."
    assert act.tool_calls[0].arguments == {"command": "insert", "path": "/testbed/x.py", "insert_line": 4,
                                           "new_str": "    return 1"}
    assert h.parse("<function=submit>\n</function>").submit
    assert h.parse("no call here").reason == "no_action"
    assert h.parse("<function=bash>\n<parameter=command>a</parameter>\n</function>"
                   "<function=bash>\n<parameter=command>b</parameter>\n</function>").reason == "multiple_actions"
    assert h.parse("<function=rm>\n</function>").reason == "unknown_tool"


def test_swe_agent_observation_wording():
    h = get_harness("swe_agent")
    call = ToolCall("bash", {"command": "true"}, "c9")
    msg = h.format_observation(call, "")
    assert msg["role"] == "tool" and msg["tool_call_id"] == "c9"
    assert msg["content"] == "OBSERVATION:\nYour command ran successfully and did not produce any output."
    long = h.format_observation(call, "x" * 100_050)["content"]
    assert "<response clipped>" in long and "50 characters were elided" in long
    assert get_harness("swe_agent_xml").format_observation(call, "hi")["role"] == "user"


def _t2(obj):
    return obj if isinstance(obj, str) else json.dumps(obj)


def test_terminus2_parses_commands_and_completion():
    h = get_harness("terminus2")
    reply = {"analysis": "Empty dir.", "plan": "Create file.",
             "commands": [{"keystrokes": "echo hi > a.txt\n", "duration": 0.1}, {"keystrokes": "C-c"}],
             "task_complete": False}
    act = h.parse("Here is my answer:\n```json\n" + _t2(reply) + "\n```")
    assert [c.arguments for c in act.tool_calls] == [
        {"keystrokes": "echo hi > a.txt\n", "duration": 0.1}, {"keystrokes": "C-c", "duration": 1.0}]
    assert not act.submit and act.thought == "Empty dir.\nCreate file."
    assert h.canonical(act) == [ToolCall("bash", {"command": "echo hi > a.txt"}),
                                ToolCall("keystrokes", {"keystrokes": "C-c", "duration": 1.0})]
    done = h.parse(_t2({"analysis": "ok", "plan": "", "commands": [], "task_complete": True}))
    assert done.submit and done.tool_calls == ()
    wait = h.parse(_t2({"analysis": "building", "plan": "wait", "commands": []}))
    assert not wait.submit and len(wait.tool_calls) == 1


@pytest.mark.parametrize(
    ("text", "reason", "fragment"),
    [
        ("I will run ls", "bad_json", "No valid JSON found"),
        ('{"analysis": "a", "plan": "b", "commands": [}', "bad_json", "Invalid JSON"),
        ('{"analysis": "a", "commands": []}', "missing_argument", "Missing required fields: plan"),
        ('{"analysis": "a", "plan": "b", "commands": "ls"}', "bad_argument_type", "must be an array"),
        ('{"analysis": "a", "plan": "b", "commands": [{"keys": "ls"}]}', "missing_argument", "Command 1"),
        ('{"analysis": "a", "plan": "b", "commands": [{"keystrokes": 5}]}', "bad_argument_type",
         "'keystrokes' must be a string"),
    ],
)
def test_terminus2_parse_errors_give_feedback(text, reason, fragment):
    err = get_harness("terminus2").parse(text)
    assert isinstance(err, FormatError) and err.reason == reason
    assert err.message.startswith("Previous response had parsing errors:\nERROR: ") and fragment in err.message
    assert err.message.endswith("Please fix these issues and provide a proper JSON response.")


def test_terminus2_confirmation_and_observation():
    h = get_harness("terminus2")
    msg = h.confirmation_message("root@sandbox:/app# ")
    assert msg["role"] == "user" and "Are you sure you want to mark the task as complete?" in msg["content"]
    assert '"task_complete": true in your JSON response again' in msg["content"]
    obs = h.format_observation(ToolCall("keystrokes", {}), "x" * 20_000)["content"]
    assert obs.startswith("New Terminal Output:\n\n") and "10000 interior bytes omitted" in obs
