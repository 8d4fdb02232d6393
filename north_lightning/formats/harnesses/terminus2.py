"""Terminus-2 (Harbor / Terminal-Bench): plain chat turns carrying one JSON object, no native tool calls.

Written from the public Terminus-2 format: every reply is
`{"analysis": ..., "plan": ..., "commands": [{"keystrokes": "ls -la\\n", "duration": 0.1}], "task_complete": false}`;
the keystrokes go verbatim to a tmux pane (a command runs only if its keystrokes end in a newline), the
environment answers with the new terminal output, a reply that does not parse is answered with the error so
the model can fix it, and `task_complete: true` must be confirmed twice: the first time the harness shows the
terminal and asks "are you sure", and only a second `task_complete: true` ends the episode.

Parsed actions carry one `keystrokes` tool call per command (`arguments = {"keystrokes", "duration"}`);
`canonical()` maps a newline-terminated keystroke string back to `bash{command}`.
"""

from __future__ import annotations

import json
from typing import Any

from north_lightning.formats.harnesses.base import (Action, FormatError, PlainTextHarness, ToolCall,
                                                     check_record_harness, response_text)
from north_lightning.formats.harnesses.common import head_tail, pick, rng_for

REQUIRED_KEYS = ("analysis", "plan", "commands")
DEFAULT_DURATION = 1.0
MAX_OUTPUT_CHARS = 10_000

PROMPT_INTROS = [
    "You are an AI assistant tasked with solving command-line tasks in a Linux environment. You will be "
    "given a task description and the output from previously executed commands. Your goal is to solve the "
    "task by providing batches of shell commands.",
    "You are an assistant that solves tasks in a Linux terminal. You see the task and the terminal output of "
    "the commands run so far, and you reply with the next batch of shell commands.",
    "You operate a Linux shell to complete a task. After each batch of commands you will see what the "
    "terminal printed; use it to decide the next batch.",
]
FORMAT_SPEC = """Format your response as JSON with the following structure:

{{
  "analysis": "What do you see in the terminal? What has been done, what is still missing?",
  "plan": "Your next steps: which commands you will run and what you expect from each.",
  "commands": [
    {{"keystrokes": "ls -la\\n", "duration": 0.1}},
    {{"keystrokes": "cd project\\n", "duration": 0.1}}
  ],
  "task_complete": true
}}

Required fields: "analysis", "plan", "commands" (may be empty); "task_complete" is optional (default false).
Each command's "keystrokes" are sent to the terminal exactly as written: end a command with a newline (\\n)
to run it. "duration" is how many seconds to wait for it (default {default_duration}); use about 0.1 for quick
commands and longer for builds or downloads. Never wait on an interactive program.

Task Description:
{task}

Current terminal state:
{screen}"""
CONFIRM = (
    "Current terminal state:\n{screen}\n\nAre you sure you want to mark the task as complete? This will trigger "
    "your solution to be graded and you won't be able to make any further corrections. If so, include "
    '"task_complete": true in your JSON response again.'
)
PARSE_ERROR = "Previous response had parsing errors:\nERROR: {error}\n\nPlease fix these issues and provide a proper JSON response."
PLANS = ["Run `{cmd}`.", "Next I will run `{cmd}` and check its output.", "Execute `{cmd}`."]
DONE_PLANS = ["The task is complete; nothing left to run.", "No further commands are needed.", "Mark the task as done."]


class Terminus2Harness(PlainTextHarness):
    name = "terminus2"

    def __init__(self, prompt_user: str = "root", host: str = "sandbox", workdir: str = "/app"):
        self.prompt = f"{prompt_user}@{host}:{workdir}# "

    # -- parsing ---------------------------------------------------------------------------------------
    def parse(self, response: str | dict[str, Any]) -> Action | FormatError:
        text = response_text(response)
        obj = _extract_json(text)
        if isinstance(obj, str):
            return FormatError("bad_json", PARSE_ERROR.format(error=obj))
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            return FormatError("missing_argument", PARSE_ERROR.format(error=f"Missing required fields: {', '.join(missing)}"))
        if not isinstance(obj["commands"], list):
            return FormatError("bad_argument_type", PARSE_ERROR.format(error="Field 'commands' must be an array"))
        calls = []
        for i, cmd in enumerate(obj["commands"]):
            if not isinstance(cmd, dict) or not isinstance(cmd.get("keystrokes"), str):
                err = f"Command {i + 1} must be an object with a string 'keystrokes' field"
                return FormatError("missing_argument", PARSE_ERROR.format(error=err))
            duration = cmd.get("duration", DEFAULT_DURATION)
            if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
                err = f"Command {i + 1} has an invalid 'duration' (a non-negative number of seconds)"
                return FormatError("bad_argument_type", PARSE_ERROR.format(error=err))
            calls.append(ToolCall("keystrokes", {"keystrokes": cmd["keystrokes"], "duration": float(duration)}))
        complete = obj.get("task_complete", False)
        if isinstance(complete, str):
            complete = complete.strip().lower() == "true"
        thought = f"{obj['analysis']}\n{obj['plan']}".strip()
        if not calls and not complete:
            # Legal in Terminus-2 (the model may just wait), so an action, not an error.
            return Action((ToolCall("keystrokes", {"keystrokes": "", "duration": DEFAULT_DURATION}),), thought)
        return Action(tuple(calls), thought, submit=bool(complete))

    def canonical(self, action: Action) -> list[ToolCall]:
        out = []
        for call in action.tool_calls:
            keys = call.arguments["keystrokes"]
            if keys.endswith("\n") and keys.strip():
                out.append(ToolCall("bash", {"command": keys[:-1]}))
            else:
                out.append(ToolCall("keystrokes", dict(call.arguments)))
        if action.submit:
            out.append(ToolCall("submit", {}))
        return out

    # -- observations ----------------------------------------------------------------------------------
    def format_observation(self, call: ToolCall, output: str, exit_code: int | None = None) -> dict[str, Any]:
        return {"role": "user", "content": "New Terminal Output:\n\n" + _limit(output)}

    def confirmation_message(self, screen: str) -> dict[str, Any]:
        """What the harness answers the *first* `task_complete: true` with; the episode ends only when the
        next reply says `task_complete: true` again (any other reply continues the episode)."""
        return {"role": "user", "content": CONFIRM.format(screen=_limit(screen))}

    def screen(self, command: str, output: str) -> str:
        """A plausible pane capture for one command: the prompt, the echoed command, its output."""
        sep = "" if not output or output.endswith("\n") else "\n"
        return f"{self.prompt}{command}\n{output}{sep}"

    # -- rendering -------------------------------------------------------------------------------------
    def render(self, trajectory: Any, *, seed: int | None = None) -> list[dict[str, Any]]:
        check_record_harness(trajectory, self.name)
        rng = rng_for(seed)
        intro = trajectory.system or pick(PROMPT_INTROS, rng)
        first = FORMAT_SPEC.format(default_duration=DEFAULT_DURATION, task=trajectory.task, screen=self.prompt)
        messages: list[dict[str, Any]] = [{"role": "user", "content": f"{intro}\n\n{first}"}]
        screen = self.prompt
        for step in trajectory.steps:
            commands = [c for c in step.calls if c.name != "submit"]
            done = len(commands) != len(step.calls)
            keystrokes = []
            if commands:
                screen = ""
                for i, call in enumerate(commands):
                    keys, shown = _keystrokes(trajectory.id, call)
                    keystrokes.append({"keystrokes": keys, "duration": float(call.arguments.get("duration", 0.1))})
                    output = step.observations[i].output if i < len(step.observations) else ""
                    screen += self.screen(shown, output)
                screen += self.prompt
            if done:  # task_complete, then the confirmation question, then task_complete again
                plan = pick(DONE_PLANS, rng)
                analysis = step.thought or "The task is done."
                messages.append({"role": "assistant", "content": self.reply(analysis, plan, keystrokes, True)})
                messages.append({"role": "user", "content": CONFIRM.format(screen=_limit(screen))})
                messages.append({"role": "assistant", "content": self.reply(analysis, plan, [], True)})
                break
            plan = pick(PLANS, rng).format(cmd="; ".join(k["keystrokes"].strip() for k in keystrokes))
            messages.append({"role": "assistant", "content": self.reply(step.thought, plan, keystrokes, False)})
            messages.append({"role": "user", "content": "New Terminal Output:\n\n" + _limit(screen)})
        return messages

    @staticmethod
    def reply(analysis: str, plan: str, commands: list[dict[str, Any]], complete: bool) -> str:
        obj = {"analysis": analysis, "plan": plan, "commands": commands, "task_complete": complete}
        return json.dumps(obj, indent=2, ensure_ascii=False)


def _keystrokes(record_id: str, call: ToolCall) -> tuple[str, str]:
    if call.name == "bash":
        return call.arguments["command"] + "\n", call.arguments["command"]
    if call.name == "keystrokes":
        return call.arguments["keystrokes"], call.arguments["keystrokes"].rstrip("\n")
    raise ValueError(f"record {record_id}: terminus2 cannot render tool {call.name!r} (only bash / keystrokes)")


def _limit(text: str) -> str:
    cut = head_tail(text, MAX_OUTPUT_CHARS)
    if cut is None:
        return text
    head, tail, elided = cut
    return f"{head}\n[... output limited to {MAX_OUTPUT_CHARS} bytes; {elided} interior bytes omitted ...]\n{tail}"


def _extract_json(text: str) -> dict[str, Any] | str:
    """The outermost JSON object in the reply (models wrap it in prose or code fences); an error string
    when there is none or it does not parse."""
    start = text.find("{")
    if start < 0:
        return "No valid JSON found in response"
    depth, in_str, escape = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                try:
                    obj = json.loads(text[start : i + 1])
                except json.JSONDecodeError as exc:
                    return f"Invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                return obj if isinstance(obj, dict) else "Response must be a JSON object"
    return "Invalid JSON: the object is not closed (missing '}')"
