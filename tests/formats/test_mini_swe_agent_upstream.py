"""The mini-SWE-agent harness against mini-swe-agent 2.4.6's own code (PyPI, a dev dependency): its
LocalEnvironment decides whether a command submitted, its text-mode action regex and format-error template
parse and answer replies, its observation template shows outputs. Ours must agree on every sample."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from north_lightning.formats.harnesses import Action, FormatError, get_harness
from north_lightning.formats.harnesses.mini_swe_agent import observation_text


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    os.environ["MSWEA_SILENT_STARTUP"] = "1"  # no banner, and its global .env goes to a temporary directory
    os.environ["MSWEA_GLOBAL_CONFIG_DIR"] = str(tmp_path_factory.mktemp("mswea"))
    import minisweagent
    from minisweagent.environments.local import LocalEnvironment
    from minisweagent.exceptions import FormatError as UpstreamFormatError
    from minisweagent.exceptions import Submitted
    from minisweagent.models.utils import actions_text

    assert minisweagent.__version__ == "2.4.6"
    config = yaml.safe_load((Path(minisweagent.__file__).parent / "config" / "mini_textbased.yaml").read_text())
    # the text-mode model's default action regex, read from its source (importing it loads litellm)
    source = Path(importlib.util.find_spec("minisweagent.models.litellm_textbased_model").origin).read_text()
    regex = re.search(r'action_regex: str = r"(.*?)"\n', source).group(1)
    return SimpleNamespace(env=LocalEnvironment(cwd=str(tmp_path_factory.mktemp("cwd"))), Submitted=Submitted,
                           FormatError=UpstreamFormatError, actions=actions_text, regex=regex,
                           model=config["model"])


COMMANDS = [
    "echo 'COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT'\necho 'Task completed successfully'",  # upstream's own tests
    "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && echo diff",
    "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUTx",
    "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT; exit 1",
    "echo hello; echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT",
    "printf '\\n   COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT  \\nrest\\n'",
    "echo MINI_SWE_AGENT_FINAL_OUTPUT",
    "ls /nonexistent-dir-for-test",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_submission_decision_matches_upstream(upstream, command):
    try:
        upstream.env.execute({"command": command})
        expected = None
    except upstream.Submitted as exc:
        expected = exc.messages[0]["extra"]["submission"]
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    harness = get_harness("mini_swe_agent_v2")
    action = harness.parse(f"THOUGHT: go.\n\n```mswea_bash_command\n{command}\n```")
    assert isinstance(action, Action) and not action.submit  # parsing alone never submits
    assert harness.submission(action.tool_calls[0], run.stdout + run.stderr, run.returncode) == expected


REPLIES = [
    "THOUGHT: list.\n\n```mswea_bash_command\nls -la\n```",
    "I could run\n```bash\ncat a\n```\nbut instead:\n\n```mswea_bash_command\nhead -n 3 a\n```",
    "no block at all",
    "```mswea_bash_command\nls\n```\n\n```mswea_bash_command\npwd\n```",
    "```mswea_bash_command\ncat <<'EOF' > f.py\nprint(1)\nEOF\n```",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_parse_and_format_error_match_upstream(upstream, reply):
    ours = get_harness("mini_swe_agent_v2").parse(reply)
    try:
        actions = upstream.actions.parse_regex_actions(reply, action_regex=upstream.regex,
                                                       format_error_template=upstream.model["format_error_template"])
    except upstream.FormatError as exc:
        assert isinstance(ours, FormatError) and ours.message == exc.messages[0]["content"]
        return
    assert isinstance(ours, Action) and [c.arguments["command"] for c in ours.tool_calls] == [a["command"] for a in actions]


@pytest.mark.parametrize(("output", "code"), [("hi\n", 0), ("", 1), ("no newline", 2), ("x" * 9_999, 0)])
def test_short_observation_matches_upstream(upstream, output, code):
    (message,) = upstream.actions.format_observation_messages(
        [{"output": output, "returncode": code, "exception_info": ""}],
        observation_template=upstream.model["observation_template"])
    assert observation_text(output, code) == message["content"]


@pytest.mark.parametrize("size", [10_000, 15_001])
def test_long_observation_keeps_upstreams_head_tail_and_count(upstream, size):
    output = "".join(chr(65 + i % 26) for i in range(size))
    (message,) = upstream.actions.format_observation_messages(
        [{"output": output, "returncode": 0, "exception_info": ""}],
        observation_template=upstream.model["observation_template"])
    ours = observation_text(output, 0)

    def parts(text):
        return [re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.DOTALL).group(1)
                for tag in ("output_head", "elided_chars", "output_tail")]

    assert parts(ours) == parts(message["content"]) and "<warning>" in ours
