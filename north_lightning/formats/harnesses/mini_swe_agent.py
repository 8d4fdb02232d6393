"""mini-SWE-agent: every reply holds exactly one fenced bash command; nothing else is a tool.

Follows mini-swe-agent as released on PyPI, read in its wheels (SWE-agent/mini-swe-agent):
- version 1 = v1.17.5 (tag commit 68d367bf0ccf40ad59a07101a94c21b66e7798ff), `config/default.yaml` and
  `agents/default.py`: the action regex is a ```bash fence;
- version 2 = v2.4.6 (tag commit a83fcae82d2a08f0ee0c688f9d137b3566c097f8), text-based mode
  (`config/mini_textbased.yaml`, `models/utils/actions_text.py`): the fence is ```mswea_bash_command, so a
  bash snippet quoted inside the reasoning is not taken for the action. (v2's default mode uses native
  tool calls; this harness serves the text-based mode.)
Both: a reply with zero or several action blocks is answered with a format error; observations are
`<returncode>N</returncode>` plus the output, past 10,000 characters a warning, head, elided count and tail.

Submission, as upstream decides it (v1 `DefaultAgent.has_finished`, v2 `LocalEnvironment._check_finished`):
the command is *run*, and the episode ends when the first line of its output is
`COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT` and its exit code is 0; the rest of the output is the submission
(the `git diff` that the instance template asks to print after the marker). The command text is never
inspected: `echo 'COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT'` submits, `echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUTx`
does not. So `parse` never sets `Action.submit`; the agent loop asks `submission()` after executing.
"""

from __future__ import annotations

import re
from typing import Any

from north_lightning.formats.harnesses.base import (Action, FormatError, PlainTextHarness, ToolCall,
                                                     check_record_harness, response_text)
from north_lightning.formats.harnesses.common import pick, rng_for

SUBMIT_MARKER = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
# v1 also accepts the marker of its earliest releases.
FINAL_MARKERS = {1: (SUBMIT_MARKER, "MINI_SWE_AGENT_FINAL_OUTPUT"), 2: (SUBMIT_MARKER,)}
SUBMIT_COMMAND = f"echo {SUBMIT_MARKER}"
MAX_OUTPUT_CHARS = 10_000
FENCES = {1: "bash", 2: "mswea_bash_command"}
VERSIONS = tuple(FENCES)

FORMAT_ERRORS = {
    1: "Please always provide EXACTLY ONE action in triple backticks, found {n} actions.\n\n"
       "Please format your action in triple backticks as shown in <response_example>.\n\n"
       "<response_example>\nHere are some thoughts about why you want to perform the action.\n\n"
       "```bash\n<action>\n```\n</response_example>\n\n"
       "If you have completed your assignment, please consult the first message about how to submit your "
       "solution (you will not be able to continue working on this task after that).",
    2: "Format error:\n\n<error>\nExpected exactly 1 action, found {n}.\n</error>\n\n"
       "Here is general guidance on how to format your response:\n\n"
       "Please always provide EXACTLY ONE action in triple backticks, found {n} actions.\n\n"
       "Please format your action in triple backticks as shown in <response_example>.\n\n"
       "<response_example>\nHere are some thoughts about why you want to perform the action.\n\n"
       "```mswea_bash_command\n<action>\n```\n</response_example>\n\n"
       "If you have completed your assignment, please consult the first message about how to\n"
       "submit your solution (you will not be able to continue working on this task after that).",
}
SYSTEM_PROMPTS = [
    "You are a helpful assistant that can interact with a computer.\n\nYour response must contain exactly ONE "
    "bash code block with ONE command (or commands connected with && or ||).\nInclude a THOUGHT section before "
    "your command where you explain your reasoning process.\nFormat your response as shown in <format_example>."
    "\n\n<format_example>\nTHOUGHT: Your reasoning and analysis here.\n\n```{fence}\nyour_command_here\n```\n"
    "</format_example>\n\nFailure to follow these rules will cause your response to be rejected.",
    "You are an assistant that works on a computer through a bash shell.\n\nEvery reply must contain exactly "
    "one bash code block holding one command (chain several with && or || if needed). Start with a THOUGHT "
    "section explaining your reasoning, then the block:\n\n<format_example>\nTHOUGHT: why this command.\n\n"
    "```{fence}\nyour_command_here\n```\n</format_example>\n\nReplies in any other format are rejected.",
    "You solve tasks by running shell commands, one per reply.\n\nRules: write a short THOUGHT, then exactly "
    "ONE ```{fence} code block with ONE command (use && or || to combine steps). Replies with no block or with "
    "several blocks are rejected.",
]
INSTANCE_TEMPLATES = [
    "<pr_description>\nConsider the following task:\n{task}\n</pr_description>\n\n<instructions>\nWork in "
    "{workdir}. Each command runs in a fresh subshell, so directory changes do not persist: use `cd {workdir} "
    "&& ...` when needed. When you are done, submit by issuing exactly this command on its own:\n"
    f"`{SUBMIT_COMMAND}`\nYou cannot continue working after submitting.\n</instructions>",
    "Task:\n{task}\n\nThe files are in {workdir}. Every command runs in a new subshell. When the task is "
    f"solved, finish with the single command `{SUBMIT_COMMAND}` (no other command in that reply).",
    "Please solve this task:\n\n{task}\n\nYou can run bash commands in {workdir}, one per reply. To finish, "
    f"run `{SUBMIT_COMMAND}` alone; after that you cannot make changes.",
]


class MiniSweAgentHarness(PlainTextHarness):
    """mini-SWE-agent's text format; `version` 1 (```bash fences) or 2 (```mswea_bash_command fences)."""

    def __init__(self, workdir: str = "/testbed", version: int = 1):
        if version not in FENCES:
            raise ValueError(f"unknown mini-SWE-agent version {version!r}; known versions: {VERSIONS}")
        self.workdir = workdir
        self.version = version
        self.fence = FENCES[version]
        self.name = "mini_swe_agent" if version == 1 else f"mini_swe_agent_v{version}"
        self._action = re.compile(rf"```{self.fence}\s*\n(.*?)\n```", re.DOTALL)

    def parse(self, response: str | dict[str, Any]) -> Action | FormatError:
        text = response_text(response)
        actions = self._action.findall(text)
        if len(actions) != 1:
            reason = "no_action" if not actions else "multiple_actions"
            return FormatError(reason, FORMAT_ERRORS[self.version].format(n=len(actions)))
        command = actions[0].strip()
        thought = text[: text.find(f"```{self.fence}")].strip()
        if thought.startswith("THOUGHT:"):
            thought = thought[len("THOUGHT:") :].strip()
        return Action((ToolCall("bash", {"command": command}),), thought)

    def submission(self, call: ToolCall, output: str, exit_code: int | None) -> str | None:
        """The submission when running `call` ended the episode (upstream's test on the command's *output*),
        else None. The agent loop asks this after every executed call."""
        if not is_submission_output(output, exit_code, self.version):
            return None
        return submission_text(output)

    def canonical(self, action: Action) -> list[ToolCall]:
        """The inverse of `render` for SFT checks: the exact command `render` writes for `submit{}` maps back
        to it; any other command (even one that submits when run) stays the bash call it is."""
        out = []
        for c in action.tool_calls:
            if c.name == "bash" and c.arguments.get("command") == SUBMIT_COMMAND:
                out.append(ToolCall("submit", {}))
            else:
                out.append(ToolCall(c.name, dict(c.arguments)))
        return out

    def format_observation(self, call: ToolCall, output: str, exit_code: int | None = None) -> dict[str, Any]:
        return {"role": "user", "content": observation_text(output, exit_code)}

    def render(self, trajectory: Any, *, seed: int | None = None) -> list[dict[str, Any]]:
        check_record_harness(trajectory, "mini_swe_agent", "mini_swe_agent_v2")
        rng = rng_for(seed)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": trajectory.system or pick(SYSTEM_PROMPTS, rng).replace("{fence}", self.fence)},
            {"role": "user", "content": pick(INSTANCE_TEMPLATES, rng).format(task=trajectory.task, workdir=self.workdir)},
        ]
        for i, step in enumerate(trajectory.steps):
            if len(step.calls) != 1:
                raise ValueError(f"record {trajectory.id} step {i}: mini-SWE-agent needs exactly one call per step")
            call = step.calls[0]
            if call.name == "submit":
                command = SUBMIT_COMMAND
            elif call.name == "bash":
                command = call.arguments["command"]
            else:
                raise ValueError(f"record {trajectory.id}: mini-SWE-agent cannot render tool {call.name!r}")
            thought = step.thought or "Next command."
            messages.append({"role": "assistant", "content": f"THOUGHT: {thought}\n\n```{self.fence}\n{command}\n```"})
            obs = step.observations[0] if step.observations else None
            if call.name == "submit" or (obs is not None and self.submission(call, obs.output, obs.exit_code) is not None):
                break  # upstream shows no observation after the submitting command
            messages.append(self.format_observation(call, obs.output if obs else "", obs.exit_code if obs else 0))
        return messages


def observation_text(output: str, exit_code: int | None) -> str:
    """`<returncode>` and `<output>`; from 10,000 characters on (upstream's `length < 10000` test) a warning,
    the first and last 5,000 characters and the elided count."""
    code = 0 if exit_code is None else exit_code
    if len(output) < MAX_OUTPUT_CHARS:
        return f"<returncode>{code}</returncode>\n<output>\n{output}</output>"
    half = MAX_OUTPUT_CHARS // 2
    head, tail, elided = output[:half], output[len(output) - half :], len(output) - MAX_OUTPUT_CHARS
    return (
        f"<returncode>{code}</returncode>\n<warning>\nThe output of your last command was too long.\n"
        "Please try a different command that produces less output.\nIf you are looking at a file, use head, "
        "tail or sed to view fewer lines.\nIf grep or find produced too much output, use a more selective "
        "pattern.\nIf you need the full output, redirect it to a file and search in that file.\n</warning>\n"
        f"<output_head>\n{head}\n</output_head>\n<elided_chars>\n{elided} characters elided\n</elided_chars>\n"
        f"<output_tail>\n{tail}\n</output_tail>"
    )


def is_submission_output(output: str, exit_code: int | None = 0, version: int = 1) -> bool:
    """Upstream's end-of-episode test: the output's first line (leading blank space skipped) is the marker and
    the command exited 0 (a failed submit command is shown to the agent like any other)."""
    lines = output.lstrip().splitlines()
    return bool(lines) and lines[0].strip() in FINAL_MARKERS[version] and (exit_code or 0) == 0


def submission_text(output: str) -> str:
    """What upstream records as the submission: the output after the marker line."""
    return "".join(output.lstrip().splitlines(keepends=True)[1:])
