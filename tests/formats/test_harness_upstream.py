"""Harness formats as their upstreams write them today (item 3 of issue 20): OpenCode's current `bash`
schema, Terminus-2's lenient JSON parser and its XML variant, mini-SWE-agent v1/v2 and its output-decided
submission. Each sample is shaped like what the upstream agent sends or its own tests send."""

from __future__ import annotations

import json

import pytest

from north_lightning.formats.harnesses import Action, FormatError, ToolCall, get_harness
from north_lightning.formats.harnesses.mini_swe_agent import MiniSweAgentHarness


def _call(name, args, cid="call_1"):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


# -- OpenCode (anomalyco/opencode a6fd1bc3: bash{command, timeout?, workdir?}) ---------------------------
def test_opencode_bash_as_sent_today_workdir_and_no_description():
    h = get_harness("opencode")
    act = h.parse({"role": "assistant", "content": "", "tool_calls": [
        _call("bash", {"command": "pytest tests", "workdir": "/app/pkg", "timeout": 120000})]})
    assert isinstance(act, Action), act
    assert act.tool_calls[0].arguments == {"command": "pytest tests", "workdir": "/app/pkg", "timeout": 120000}
    # without workdir it is the canonical call; with it, the native call is kept (its directory matters)
    plain = h.parse({"tool_calls": [_call("bash", {"command": "ls"})]})
    assert h.canonical(plain) == [ToolCall("bash", {"command": "ls"})]
    assert h.canonical(act) == [ToolCall("bash", act.tool_calls[0].arguments)]
    # older releases' description still parses; timeout is a positive integer
    assert isinstance(h.parse({"tool_calls": [_call("bash", {"command": "ls", "description": "List"})]}), Action)
    bad = h.parse({"tool_calls": [_call("bash", {"command": "ls", "timeout": 0})]})
    assert isinstance(bad, FormatError) and bad.reason == "bad_argument_value"
    schema = next(t for t in h.tools() if t["function"]["name"] == "bash")["function"]["parameters"]
    assert schema["required"] == ["command"] and "workdir" in schema["properties"]


def test_opencode_renders_bash_without_invented_description():
    from formats.sample_records import agnostic_record

    h = get_harness("opencode")
    calls = [tc for m in h.render(agnostic_record(1)) for tc in m.get("tool_calls") or []]
    assert calls and all(set(tc["function"]["arguments"]) == {"command"} for tc in calls)


# -- Terminus-2 (Harbor terminus_json_plain_parser / terminus_xml_plain_parser) ------------------------
def test_terminus2_repairs_a_missing_closing_brace_like_upstream():
    h = get_harness("terminus2")
    cut = '{"analysis": "a", "plan": "b", "commands": [{"keystrokes": "ls -la\\n", "duration": 0.1}], "task_complete": false'
    act = h.parse(cut)
    assert isinstance(act, Action), act
    assert act.tool_calls[0].arguments == {"keystrokes": "ls -la\n", "duration": 0.1} and not act.submit
    # two braces missing (the command object too) is still repaired; a missing ] is not (upstream adds braces only)
    assert isinstance(h.parse('{"analysis": "a", "plan": "b", "commands": [], "x": {"y": 1'), Action)
    err = h.parse('{"analysis": "a", "plan": "b", "commands": [{"keystrokes": "ls\\n", "duration": 0.1}')
    assert isinstance(err, FormatError) and err.reason == "bad_json"


def test_terminus2_mixed_content_and_lenient_fields():
    h = get_harness("terminus2")
    mixed = 'Sure {not json} here: {"analysis": "a", "plan": "b", "commands": [{"keystrokes": "pwd\\n"}]} done'
    act = h.parse(mixed)
    assert isinstance(act, Action) and act.tool_calls[0].arguments == {"keystrokes": "pwd\n", "duration": 1.0}
    # a non-numeric duration is replaced by 1.0 (upstream warns), "yes" completes
    act = h.parse('{"analysis": "a", "plan": "b", "commands": [{"keystrokes": "ls\\n", "duration": "x"}], '
                  '"task_complete": "yes"}')
    assert act.submit and act.tool_calls[0].arguments["duration"] == 1.0
    # a broken command list does not stop a completing reply
    done = h.parse('{"analysis": "a", "plan": "b", "commands": [{"keys": "ls"}], "task_complete": true}')
    assert isinstance(done, Action) and done.submit and done.tool_calls == ()


def test_terminus2_xml_variant_parses_and_renders():
    h = get_harness("terminus2_xml")
    reply = ('Thinking first.\n<response>\n<analysis>Empty dir.</analysis>\n<plan>Create it.</plan>\n<commands>\n'
             '<keystrokes duration="0.5">echo "a < b && c" > f.txt\n</keystrokes>\n'
             "<keystrokes duration='bad'>cat f.txt\n</keystrokes>\n</commands>\n</response>")
    act = h.parse(reply)
    assert [c.arguments for c in act.tool_calls] == [
        {"keystrokes": 'echo "a < b && c" > f.txt\n', "duration": 0.5}, {"keystrokes": "cat f.txt\n", "duration": 1.0}]
    assert act.thought == "Empty dir.\nCreate it." and not act.submit
    for text, fragment in [("just text", "No <response> tag found"),
                           ("<response><analysis>x</analysis><plan>y</plan></response>", "Missing <commands> section")]:
        err = h.parse(text)
        assert isinstance(err, FormatError) and fragment in err.message
        assert err.message.endswith("Please fix these issues and provide a proper response.")
    assert h.parse("<response><commands></commands><task_complete>false</task_complete></response>").submit is False
    assert h.parse("<response><task_complete> true </task_complete></response>").submit
    assert "<task_complete>true</task_complete> again." in h.confirmation_message("$ ")["content"]
    assert get_harness("terminus2", parser="xml").name == "terminus2_xml"
    with pytest.raises(ValueError, match="unknown Terminus-2 parser"):
        get_harness("terminus2", parser="yaml")


# -- mini-SWE-agent v1 (1.17.5) / v2 (2.4.6) ------------------------------------------------------------
def test_mini_versions_differ_in_their_fence():
    v1, v2 = get_harness("mini_swe_agent"), get_harness("mini_swe_agent_v2")
    assert (v1.version, v2.version) == (1, 2) and get_harness("mini_swe_agent", version=2).name == "mini_swe_agent_v2"
    text2 = "THOUGHT: list.\n\n```mswea_bash_command\nls -la\n```"
    assert v2.parse(text2).tool_calls[0].arguments == {"command": "ls -la"}
    err = v1.parse(text2)
    assert isinstance(err, FormatError) and err.reason == "no_action"
    # v2 ignores a ```bash snippet quoted in the reasoning; v1 counts it as the action
    quoted = "I could run\n```bash\ncat a\n```\nbut instead:\n\n```mswea_bash_command\nhead a\n```"
    assert v2.parse(quoted).tool_calls[0].arguments == {"command": "head a"}
    assert v1.parse(quoted).tool_calls[0].arguments == {"command": "cat a"}
    err = v2.parse("no block")
    assert err.message.startswith("Format error:\n\n<error>\nExpected exactly 1 action, found 0.\n</error>")
    assert "```mswea_bash_command\n<action>\n```" in err.message
    with pytest.raises(ValueError, match="unknown mini-SWE-agent version"):
        MiniSweAgentHarness(version=3)


@pytest.mark.parametrize("name", ["mini_swe_agent", "mini_swe_agent_v2"])
def test_mini_submission_is_decided_by_the_output_not_the_command(name):
    h = get_harness(name)
    fence = h.fence
    quoted = h.parse(f"Done.\n```{fence}\necho 'COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT'\necho 'done'\n```")
    suffixed = h.parse(f"```{fence}\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUTx\n```")
    # parsing alone never ends the episode: the command has to run
    assert not quoted.submit and not suffixed.submit
    call = quoted.tool_calls[0]
    assert h.submission(call, "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\ndone\n", 0) == "done\n"
    assert h.submission(call, "\n  COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT  \ndiff --git a b\n", 0) == "diff --git a b\n"
    assert h.submission(suffixed.tool_calls[0], "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUTx\n", 0) is None
    assert h.submission(call, "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n", 1) is None  # failed: shown, not final
    assert h.submission(call, "hello\nCOMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n", 0) is None
    legacy = h.submission(call, "MINI_SWE_AGENT_FINAL_OUTPUT\n", 0)
    assert (legacy == "") if h.version == 1 else (legacy is None)


def test_mini_render_stops_at_the_output_that_submitted():
    from north_lightning.formats.records import Observation, Step, Trajectory

    steps = (Step("look", (ToolCall("bash", {"command": "ls"}),), (Observation("a\n", 0),)),
             Step("submit", (ToolCall("bash", {"command": "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff"}),),
                  (Observation("COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\ndiff --git a/x b/x\n", 0),)))
    record = Trajectory(id="m", task="t", source="s", steps=steps)
    messages = get_harness("mini_swe_agent_v2").render(record)
    assert messages[-1]["role"] == "assistant" and "```mswea_bash_command\necho COMPLETE" in messages[-1]["content"]
    assert sum(m["role"] == "assistant" for m in messages) == 2


def test_terminus2_warnings_as_upstream_words_them():
    h = get_harness("terminus2")
    act = h.parse('Here you go:\n{"analysis": "a", "plan": "b", "commands": [{"keystrokes": "ls"}, '
                  '{"keystrokes": "pwd\\n", "duration": "soon"}]}')
    assert act.warning == ("- Extra text detected before JSON object\n- Command 1: Missing duration field, using default "
                           "1.0\n- Command 1 should end with newline when followed by another command. Otherwise the "
                           "two commands will be concatenated together on the same line.\n- Command 2: Invalid "
                           "duration value, using default 1.0")
    repaired = h.parse('{"analysis": "a", "plan": "b", "commands": [{"keystrokes": "ls\\n", "duration": 0.1}]')
    assert repaired.warning.startswith("- AUTO-CORRECTED: Fixed incomplete JSON by adding missing closing brace")
    clean = h.parse('{"analysis": "a", "plan": "b", "commands": [{"keystrokes": "ls\\n", "duration": 0.1}]}')
    assert clean.warning == ""
    obs = h.warn(h.format_observation(clean.tool_calls[0], "$ "), act.warning)
    assert obs["content"].startswith("Previous response had warnings:\nWARNINGS: - Extra text detected before JSON")
    assert obs["content"].endswith("\n\nNew Terminal Output:\n\n$ ")
    xml = get_harness("terminus2_xml").parse('<response><analysis>a</analysis><plan>b</plan><commands>'
                                             '<keystrokes>ls\n</keystrokes></commands></response>')
    assert xml.warning == "- Command 1: Missing duration attribute, using default 1.0"
