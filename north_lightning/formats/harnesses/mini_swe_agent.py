"""mini-SWE-agent: every reply holds exactly one ```bash fenced command; nothing else is a tool.

Written from mini-SWE-agent's public default config: a reply with zero or several bash blocks is answered
with the "EXACTLY ONE action" format error; observations are `<returncode>N</returncode>` plus the output,
and output longer than 10,000 characters is shown as a warning, its head, the elided count and its tail;
the agent finishes by running `echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT` (the environment ends the episode
when the *output's* first line is that marker, see `is_submission_output`).
"""

from __future__ import annotations

import re
from typing import Any

from north_lightning.formats.harnesses.base import (Action, FormatError, PlainTextHarness, ToolCall,
                                                     check_record_harness, response_text)
from north_lightning.formats.harnesses.common import head_tail, pick, rng_for

SUBMIT_MARKER = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
SUBMIT_COMMAND = f"echo {SUBMIT_MARKER}"
MAX_OUTPUT_CHARS = 10_000
_ACTION = re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL)

FORMAT_ERROR = (
    "Please always provide EXACTLY ONE action in triple backticks, found {n} actions.\n\n"
    "Please format your action in triple backticks as shown in <response_example>.\n\n"
    "<response_example>\nHere are some thoughts about why you want to perform the action.\n\n"
    "```bash\n<action>\n```\n</response_example>\n\n"
    "If you have completed your assignment, please consult the first message about how to submit your "
    "solution (you will not be able to continue working on this task after that)."
)
SYSTEM_PROMPTS = [
    "You are a helpful assistant that can interact with a computer.\n\nYour response must contain exactly ONE "
    "bash code block with ONE command (or commands connected with && or ||).\nInclude a THOUGHT section before "
    "your command where you explain your reasoning process.\nFormat your response as shown in <format_example>."
    "\n\n<format_example>\nTHOUGHT: Your reasoning and analysis here.\n\n```bash\nyour_command_here\n```\n"
    "</format_example>\n\nFailure to follow these rules will cause your response to be rejected.",
    "You are an assistant that works on a computer through a bash shell.\n\nEvery reply must contain exactly "
    "one bash code block holding one command (chain several with && or || if needed). Start with a THOUGHT "
    "section explaining your reasoning, then the block:\n\n<format_example>\nTHOUGHT: why this command.\n\n"
    "```bash\nyour_command_here\n```\n</format_example>\n\nReplies in any other format are rejected.",
    "You solve tasks by running shell commands, one per reply.\n\nRules: write a short THOUGHT, then exactly "
    "ONE ```bash code block with ONE command (use && or || to combine steps). Replies with no block or with "
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
    name = "mini_swe_agent"

    def __init__(self, workdir: str = "/testbed"):
        self.workdir = workdir

    def parse(self, response: str | dict[str, Any]) -> Action | FormatError:
        text = response_text(response)
        actions = _ACTION.findall(text)
        if len(actions) != 1:
            reason = "no_action" if not actions else "multiple_actions"
            return FormatError(reason, FORMAT_ERROR.format(n=len(actions)))
        command = actions[0].strip()
        thought = text[: text.find("```bash")].strip()
        if thought.startswith("THOUGHT:"):
            thought = thought[len("THOUGHT:") :].strip()
        submit = command.splitlines()[0].strip().startswith(SUBMIT_COMMAND) if command else False
        return Action((ToolCall("bash", {"command": command}),), thought, submit=submit)

    def canonical(self, action: Action) -> list[ToolCall]:
        if action.submit:
            return [ToolCall("submit", {})]
        return [ToolCall(c.name, dict(c.arguments)) for c in action.tool_calls]

    def format_observation(self, call: ToolCall, output: str, exit_code: int | None = None) -> dict[str, Any]:
        return {"role": "user", "content": observation_text(output, exit_code)}

    def render(self, trajectory: Any, *, seed: int | None = None) -> list[dict[str, Any]]:
        check_record_harness(trajectory, self.name)
        rng = rng_for(seed)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": trajectory.system or pick(SYSTEM_PROMPTS, rng)},
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
            messages.append({"role": "assistant", "content": f"THOUGHT: {thought}\n\n```bash\n{command}\n```"})
            if call.name == "submit":
                break
            obs = step.observations[0] if step.observations else None
            messages.append(self.format_observation(call, obs.output if obs else "", obs.exit_code if obs else 0))
        return messages


def observation_text(output: str, exit_code: int | None) -> str:
    """`<returncode>` and `<output>`; past 10,000 characters a warning, head, elided count and tail."""
    code = 0 if exit_code is None else exit_code
    cut = head_tail(output, MAX_OUTPUT_CHARS)
    if cut is None:
        return f"<returncode>{code}</returncode>\n<output>\n{output}</output>"
    head, tail, elided = cut
    return (
        f"<returncode>{code}</returncode>\n<warning>\nThe output of your last command was too long.\n"
        "Please try a different command that produces less output.\nIf you are looking at a file, use head, "
        "tail or sed to view fewer lines.\nIf grep or find produced too much output, use a more selective "
        "pattern.\nIf you need the full output, redirect it to a file and search in that file.\n</warning>\n"
        f"<output_head>\n{head}\n</output_head>\n<elided_chars>\n{elided} characters elided\n</elided_chars>\n"
        f"<output_tail>\n{tail}\n</output_tail>"
    )


def is_submission_output(output: str) -> bool:
    """The environment's end-of-episode test: the command output's first line is the marker."""
    lines = output.lstrip().splitlines()
    return bool(lines) and lines[0].strip() == SUBMIT_MARKER
