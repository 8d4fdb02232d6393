"""Terminus-2 (Harbor / Terminal-Bench): plain chat turns carrying one JSON object or one XML block, no
native tool calls.

Follows Harbor's Terminus-2 agent (harbor-framework/harbor, formerly laude-institute/harbor:
`src/harbor/agents/terminus_2/terminus_{json,xml}_plain_parser.py` and `templates/terminus-{json,xml}-plain.txt`,
read in the vendored copy multimodal-art-projection/TACO@f3bb108fb472f22a8a8dbf90be0e5499c19d4360; the JSON
parser is the one of terminal-bench's `terminal_bench/agents/terminus_2/`, seen in
ethanewer/deepswe-data-gen@677dcd1c086cd48f8c5f33958101bdcf070a04bd). `Terminus2Harness(parser="json")`
(registry `terminus2`) replies
`{"analysis": ..., "plan": ..., "commands": [{"keystrokes": "ls -la\\n", "duration": 0.1}], "task_complete": false}`;
`parser="xml"` (registry `terminus2_xml`) replies `<response><analysis>..</analysis><plan>..</plan><commands>
<keystrokes duration="0.1">ls -la\n</keystrokes></commands><task_complete>true</task_complete></response>`.
Parsing follows upstream's leniency: a JSON reply whose closing braces are missing is repaired by appending
them, then a flat JSON object is looked for in mixed content; a missing or non-numeric `duration` becomes 1.0
(upstream warns, it does not refuse); `task_complete` may be a string ("true", "1", "yes"); a broken command
list in a reply that says `task_complete` still completes; an XML reply may lack `</response>`. What upstream
warns about (text around the JSON, a missing duration, a command without its newline before another, an
auto-correction) is kept in `Action.warning` and shown, as upstream does, before the next terminal output
("Previous response had warnings:\nWARNINGS: - ...").
The keystrokes go verbatim to a tmux pane (a command runs only if its keystrokes end in a newline), the
environment answers with the new terminal output, a reply that does not parse is answered with the error so
the model can fix it, and `task_complete: true` must be confirmed twice: the first time the harness shows the
terminal and asks "are you sure", and only a second `task_complete: true` ends the episode.

Parsed actions carry one `keystrokes` tool call per command (`arguments = {"keystrokes", "duration"}`);
`canonical()` maps a newline-terminated keystroke string back to `bash{command}`.
"""

from __future__ import annotations

import json
import re
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
XML_FORMAT_SPEC = """Format your response as XML with the following structure:

<response>
<analysis>
What do you see in the terminal? What has been done, what is still missing?
</analysis>
<plan>
Your next steps: which commands you will run and what you expect from each.
</plan>
<commands>
<keystrokes duration="0.1">ls -la
</keystrokes>
<keystrokes duration="0.1">cd project
</keystrokes>
</commands>
<task_complete>true</task_complete>
</response>

Required sections: <analysis>, <plan>, <commands> (may be empty); <task_complete> is optional (default false).
The text inside each <keystrokes> tag is sent to the terminal verbatim (do not XML-escape it): end a command
with a newline to run it. The `duration` attribute is how many seconds to wait for it (default {default_duration}).

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
XML_CONFIRM_TAIL = ('"task_complete": true in your JSON response again.', "<task_complete>true</task_complete> again.")
XML_PARSE_ERROR = "Previous response had parsing errors:\nERROR: {error}\n\nPlease fix these issues and provide a proper response."
PARSERS = ("json", "xml")
PLANS = ["Run `{cmd}`.", "Next I will run `{cmd}` and check its output.", "Execute `{cmd}`."]
DONE_PLANS = ["The task is complete; nothing left to run.", "No further commands are needed.", "Mark the task as done."]


class Terminus2Harness(PlainTextHarness):
    """Terminus-2's format; `parser` is "json" (the default) or "xml", as Harbor's `parser_name`."""

    def __init__(self, prompt_user: str = "root", host: str = "sandbox", workdir: str = "/app", parser: str = "json"):
        if parser not in PARSERS:
            raise ValueError(f"unknown Terminus-2 parser {parser!r}; known parsers: {', '.join(PARSERS)}")
        self.prompt = f"{prompt_user}@{host}:{workdir}# "
        self.parser = parser
        self.name = "terminus2" if parser == "json" else "terminus2_xml"

    # -- parsing ---------------------------------------------------------------------------------------
    def parse(self, response: str | dict[str, Any]) -> Action | FormatError:
        text = response_text(response)
        if self.parser == "xml":
            return _parse_xml(text)
        obj, warnings = _json_reply(text)
        if isinstance(obj, str):
            return FormatError("bad_json", PARSE_ERROR.format(error=obj))
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            return FormatError("missing_argument", PARSE_ERROR.format(error=f"Missing required fields: {', '.join(missing)}"))
        if not isinstance(obj["commands"], list):
            return FormatError("bad_argument_type", PARSE_ERROR.format(error="Field 'commands' must be an array"))
        complete = obj.get("task_complete", False)
        if isinstance(complete, str):
            complete = complete.strip().lower() in ("true", "1", "yes")
        thought = f"{obj['analysis']}\n{obj['plan']}".strip()
        calls = []
        for i, cmd in enumerate(obj["commands"]):
            error = _command_error(i, cmd)
            if error is not None:
                if complete:  # upstream: a broken command list does not stop a completing reply
                    return Action((), thought, submit=True)
                return FormatError(error[0], PARSE_ERROR.format(error=error[1]))
            calls.append(ToolCall("keystrokes", {"keystrokes": cmd["keystrokes"], "duration": _duration(cmd.get("duration"))}))
            warnings += _command_warnings(i, len(obj["commands"]), cmd["keystrokes"], cmd, "field")
        return _action(calls, thought, bool(complete), warnings)

    def warn(self, observation: dict[str, Any], warning: str) -> dict[str, Any]:
        """The observation that follows a reply with warnings, prefixed as Terminus-2 does."""
        content = f"Previous response had warnings:\nWARNINGS: {warning}\n\n{observation['content']}"
        return {**observation, "content": content}

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
        return {"role": "user", "content": self._confirm(screen)}

    def _confirm(self, screen: str) -> str:
        text = CONFIRM.format(screen=_limit(screen))
        return text if self.parser == "json" else text.replace(*XML_CONFIRM_TAIL)

    def screen(self, command: str, output: str) -> str:
        """A plausible pane capture for one command: the prompt, the echoed command, its output."""
        sep = "" if not output or output.endswith("\n") else "\n"
        return f"{self.prompt}{command}\n{output}{sep}"

    # -- rendering -------------------------------------------------------------------------------------
    def render(self, trajectory: Any, *, seed: int | None = None) -> list[dict[str, Any]]:
        check_record_harness(trajectory, "terminus2", "terminus2_xml")
        rng = rng_for(seed)
        intro = trajectory.system or pick(PROMPT_INTROS, rng)
        spec = FORMAT_SPEC if self.parser == "json" else XML_FORMAT_SPEC
        first = spec.format(default_duration=DEFAULT_DURATION, task=trajectory.task, screen=self.prompt)
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
                messages.append({"role": "user", "content": self._confirm(screen)})
                messages.append({"role": "assistant", "content": self.reply(analysis, plan, [], True)})
                break
            plan = pick(PLANS, rng).format(cmd="; ".join(k["keystrokes"].strip() for k in keystrokes))
            messages.append({"role": "assistant", "content": self.reply(step.thought, plan, keystrokes, False)})
            messages.append({"role": "user", "content": "New Terminal Output:\n\n" + _limit(screen)})
        return messages

    def reply(self, analysis: str, plan: str, commands: list[dict[str, Any]], complete: bool) -> str:
        """One assistant turn in this parser's syntax."""
        if self.parser == "json":
            obj = {"analysis": analysis, "plan": plan, "commands": commands, "task_complete": complete}
            return json.dumps(obj, indent=2, ensure_ascii=False)
        keys = "".join(f'<keystrokes duration="{c["duration"]}">{c["keystrokes"]}</keystrokes>\n' for c in commands)
        return (f"<response>\n<analysis>\n{analysis}\n</analysis>\n<plan>\n{plan}\n</plan>\n<commands>\n{keys}"
                f"</commands>\n<task_complete>{'true' if complete else 'false'}</task_complete>\n</response>")


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


def _action(calls: list[ToolCall], thought: str, complete: bool, warnings: list[str]) -> Action:
    warning = "- " + "\n- ".join(warnings) if warnings else ""
    if not calls and not complete:
        # Legal in Terminus-2 (the model may just wait), so an action, not an error.
        return Action((ToolCall("keystrokes", {"keystrokes": "", "duration": DEFAULT_DURATION}),), thought,
                      warning=warning)
    return Action(tuple(calls), thought, submit=complete, warning=warning)


def _command_warnings(i: int, n: int, keys: str, given: dict[str, Any], kind: str) -> list[str]:
    """Upstream's warnings on one command (kind: "field" in JSON, "attribute" in XML)."""
    out = []
    if "duration" not in given:
        out.append(f"Command {i + 1}: Missing duration {kind}, using default 1.0")
    elif _duration(given["duration"]) == DEFAULT_DURATION and given["duration"] != DEFAULT_DURATION:
        out.append(f"Command {i + 1}: Invalid duration value, using default 1.0")
    if i < n - 1 and not keys.endswith("\n"):
        out.append(f"Command {i + 1} should end with newline when followed by another command. Otherwise the two "
                   "commands will be concatenated together on the same line.")
    return out


def _duration(value: Any) -> float:
    """Upstream replaces a missing or non-numeric duration by 1.0 (with a warning), it does not refuse it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return DEFAULT_DURATION
    return float(value)


def _command_error(i: int, cmd: Any) -> tuple[str, str] | None:
    if not isinstance(cmd, dict):
        return "bad_argument_type", f"Command {i + 1} must be an object"
    if "keystrokes" not in cmd:
        return "missing_argument", f"Command {i + 1} missing required 'keystrokes' field"
    if not isinstance(cmd["keystrokes"], str):
        return "bad_argument_type", f"Command {i + 1} 'keystrokes' must be a string"
    return None


_FLAT_OBJECT = re.compile(r"\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}", re.DOTALL)


def _json_reply(text: str) -> tuple[dict[str, Any] | str, list[str]]:
    """The reply's JSON object and upstream's warnings, with upstream's two repairs when it does not parse as
    written: append the missing closing braces, then take the first shallow object that parses out of mixed
    content. As upstream, a repair counts only when its result is a complete reply; otherwise the original
    error stands."""
    obj = _extract_json(text)
    if not isinstance(obj, str):
        return obj, _extra_text(text)
    missing = text.count("{") - text.count("}")
    if missing > 0:
        fixed = _extract_json(text + "}" * missing)
        if _complete_reply(fixed):
            note = "AUTO-CORRECTED: Fixed incomplete JSON by adding missing closing brace - please fix this in future responses"
            return fixed, [note, *_extra_text(text + "}" * missing)]
    for match in _FLAT_OBJECT.findall(text):
        try:
            candidate = json.loads(match)
        except json.JSONDecodeError:
            continue
        if _complete_reply(candidate):
            return candidate, ["AUTO-CORRECTED: Extracted JSON from mixed content - please fix this in future responses"]
    return obj, []


def _extra_text(text: str) -> list[str]:
    start, end = text.find("{"), text.rfind("}")
    out = []
    if text[:start].strip():
        out.append("Extra text detected before JSON object")
    if text[end + 1 :].strip():
        out.append("Extra text detected after JSON object")
    return out


def _complete_reply(obj: Any) -> bool:
    return isinstance(obj, dict) and all(k in obj for k in REQUIRED_KEYS) and isinstance(obj["commands"], list)


def _extract_json(text: str) -> dict[str, Any] | str:
    """The first balanced JSON object in the reply (models wrap it in prose or code fences); an error string
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
    return "No valid JSON found in response"  # never closed: upstream finds no object either


_XML_SECTION = {name: re.compile(rf"<{name}>(.*?)</{name}>|<{name}\s*/>", re.DOTALL)
                for name in ("analysis", "plan", "commands")}
_XML_KEYSTROKES = re.compile(r"<keystrokes([^>]*)>(.*?)</keystrokes>", re.DOTALL)
_XML_DURATION = re.compile(r"""duration\s*=\s*["']([^"']*)["']""")
_XML_COMPLETE = re.compile(r"<task_complete>\s*true\s*</task_complete>", re.IGNORECASE)


def _parse_xml(text: str) -> Action | FormatError:
    """Terminus-2's XML reply. Keystrokes are taken verbatim (no entity decoding, as upstream); a reply cut
    before `</response>` is read to its end."""
    start = text.find("<response>")
    if start < 0:
        return FormatError("no_action", XML_PARSE_ERROR.format(error="No <response> tag found"))
    end = text.find("</response>", start)
    warnings = ["Extra text detected before <response> tag"] if text[:start].strip() else []
    if end >= 0 and text[end + len("</response>") :].strip():
        warnings.append("Extra text detected after </response> tag")
    body = text[start + len("<response>") : end if end >= 0 else len(text)].strip()
    complete = bool(_XML_COMPLETE.search(body))
    sections: dict[str, str | None] = {}
    for name, pattern in _XML_SECTION.items():
        match = pattern.search(body)
        sections[name] = None if match is None else (match.group(1) or "").strip()
    thought = f"{sections['analysis'] or ''}\n{sections['plan'] or ''}".strip()
    if sections["commands"] is None:
        if complete:
            return Action((), thought, submit=True)
        return FormatError("missing_argument", XML_PARSE_ERROR.format(error="Missing <commands> section"))
    calls = []
    found_keys = _XML_KEYSTROKES.findall(sections["commands"])
    for i, (attributes, keys) in enumerate(found_keys):
        found = _XML_DURATION.search(attributes)
        duration = DEFAULT_DURATION
        if found is None:
            warnings.append(f"Command {i + 1}: Missing duration attribute, using default 1.0")
        else:
            try:
                duration = float(found.group(1))
            except ValueError:
                warnings.append(f"Command {i + 1}: Invalid duration value '{found.group(1)}', using default 1.0")
        calls.append(ToolCall("keystrokes", {"keystrokes": keys, "duration": duration}))
        warnings += _command_warnings(i, len(found_keys), keys, {"duration": duration}, "attribute")
    return _action(calls, thought, complete, warnings)
