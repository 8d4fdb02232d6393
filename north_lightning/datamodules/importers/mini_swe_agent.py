"""mini-SWE-agent saved trajectories → canonical records.

Follows the trajectory JSON mini-swe-agent writes (SWE-agent/mini-swe-agent): v1.17.5
(`run/utils/save.py: save_traj`, tag commit 68d367bf0ccf40ad59a07101a94c21b66e7798ff) and v2.4.6
(`agents/default.py: DefaultAgent.serialize`, tag commit a83fcae82d2a08f0ee0c688f9d137b3566c097f8):
`{"info": {"exit_status", "submission", "model_stats", "mini_version", "config"}, "messages": [...],
"trajectory_format": "mini-swe-agent-1" | "mini-swe-agent-1.1", "instance_id"?}` (the SWE-bench runner saves
`<instance_id>.traj.json` with the id at top level). Messages are system, the instance prompt, then
assistant replies holding one fenced command (```bash in v1, ```mswea_bash_command in v2's text mode, native
`tool_calls` in v2's tool-call mode) and `<returncode>N</returncode><output>...</output>` observations (v2
keeps the raw output in `extra.raw_output`). A reply upstream answered with a format error is not an action
and is left out with its error message (`meta.format_errors`). The episode ends when a command's output
starts with `COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`: v1 then appends a user message holding the submission,
v2 an `exit` message; that command's observation is rebuilt as the marker line plus the submission, which
is what decides the submission when the record is rendered again.

Kept: `info.exit_status == "Submitted"`; other exits (`LimitsExceeded`, errors) are `truncated`. The format
carries no resolved verdict. Records are fixed to the mini-SWE-agent harness version that wrote them
(`mini_swe_agent` for v1, `mini_swe_agent_v2` for v2; v2's tool-call mode renders as its text mode).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from north_lightning.datamodules.importers.base import (Drop, ImportOptions, check_resolved, decode_arguments, require,
                                                        task_text, text_of)
from north_lightning.datamodules.importers.swe_agent import _record_id
from north_lightning.formats.harnesses.base import ToolCall
from north_lightning.formats.harnesses.mini_swe_agent import SUBMIT_MARKER
from north_lightning.formats.records import Observation, Step, Trajectory

_FENCES = {1: re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL),
           2: re.compile(r"```mswea_bash_command\s*\n(.*?)\n```", re.DOTALL)}
_RETURNCODE = re.compile(r"<returncode>(-?\d+)</returncode>")
_OUTPUT = re.compile(r"<output>\n?(.*?)</output>", re.DOTALL)
_HEAD_TAIL = re.compile(r"<output_head>\n(.*?)\n</output_head>.*<output_tail>\n(.*?)\n</output_tail>", re.DOTALL)
_TASK_PATTERNS = (
    re.compile(r"<pr_description>\s*(?:Consider the following PR description:\n)?(.*?)\n?</pr_description>", re.DOTALL),
    re.compile(r"Please solve this issue: (.*?)\n\nYou can execute bash commands", re.DOTALL),
)


def convert(item: Any, where: str, options: ImportOptions) -> Trajectory:
    info = require(item, "info", dict)
    messages = require(item, "messages", list)
    status = info.get("exit_status")
    if status != "Submitted":
        raise Drop("truncated", f"exit_status {status!r} (not 'Submitted')")
    version = _version(info, messages)
    system = task = None
    steps: list[Step] = []
    format_errors = 0
    pending: ToolCall | None = None
    thought = ""
    for i, msg in enumerate(messages):
        role = require(msg, "role", str, f"messages[{i}]")
        text = text_of(msg.get("content"))
        if role == "system" and system is None:
            system = text
        elif role == "user" and task is None:
            task = task_text(text, _TASK_PATTERNS)
        elif role == "assistant":
            if pending is not None:
                raise Drop("malformed", f"messages[{i}]: a reply follows a command that got no observation")
            pending, thought = _action(msg, text, version, f"messages[{i}]")
        elif role in ("user", "tool", "exit") and pending is not None:
            if _is_format_error(text):  # upstream refused the reply after all (e.g. a block it did not accept)
                pending, format_errors = None, format_errors + 1
                continue
            final = role == "exit" or i == len(messages) - 1
            steps.append(Step(thought, (pending,), (_observation(msg, text, final),)))
            pending = None
        elif role in ("user", "tool") and _is_format_error(text):
            format_errors += 1  # the refused reply (no parsable action) and upstream's error message
        elif role not in ("user", "tool", "exit"):
            raise Drop("malformed", f"messages[{i}]: unknown role {role!r}")
    if task is None or not steps:
        raise Drop("malformed", "no instance prompt or no executed command")
    base = item.get("instance_id") or Path(where.split(":")[0]).name.removesuffix(".json").removesuffix(".traj")
    return Trajectory(
        id=_record_id(str(base), steps), task=task, source=options.source, steps=tuple(steps), system=system,
        harness="mini_swe_agent" if version == 1 else "mini_swe_agent_v2", verified=False,
        meta={"format": f"mini-swe-agent-v{version}", "origin": where, "mini_version": info.get("mini_version"),
              "exit_status": status, "submission": info.get("submission"), "format_errors": format_errors,
              **check_resolved(None, options, "")},
    )


def _version(info: dict[str, Any], messages: list[Any]) -> int:
    if any(isinstance(m, dict) and "```mswea_bash_command" in text_of(m.get("content")) for m in messages):
        return 2
    if any(isinstance(m, dict) and m.get("tool_calls") for m in messages):
        return 2
    return 2 if str(info.get("mini_version") or "").startswith("2") else 1


def _action(msg: dict[str, Any], text: str, version: int, where: str) -> tuple[ToolCall | None, str]:
    """The reply's command, or None for a reply upstream refused (zero or several actions)."""
    if msg.get("tool_calls"):
        calls = msg["tool_calls"]
        if len(calls) != 1:
            raise Drop("unsupported_tool", f"{where}: {len(calls)} parallel tool calls (one command per step here)")
        fn = require(calls[0], "function", dict, f"{where}.tool_calls[0]")
        if fn.get("name") != "bash":
            raise Drop("unsupported_tool", f"{where}: tool {fn.get('name')!r} (mini-SWE-agent has only bash)")
        command = require(decode_arguments(fn.get("arguments"), where), "command", str, f"{where} arguments")
        return ToolCall("bash", {"command": command.strip()}), text.strip()
    found = _FENCES[version].findall(text)
    if len(found) != 1:
        return None, ""
    thought = text[: text.find("```")].strip().removeprefix("THOUGHT:").strip()
    return ToolCall("bash", {"command": found[0].strip()}), thought


def _is_format_error(text: str) -> bool:
    return "EXACTLY ONE action" in text and "<returncode>" not in text


def _observation(msg: dict[str, Any], text: str, final: bool) -> Observation:
    extra = msg.get("extra") if isinstance(msg.get("extra"), dict) else {}
    if final:  # the submission: rebuild what the command printed (marker line, then the submission)
        submission = extra.get("submission", text)
        return Observation(f"{SUBMIT_MARKER}\n{submission}", 0)
    code = _RETURNCODE.search(text)
    if code is None and "returncode" not in extra:
        raise Drop("malformed", "an observation without <returncode>")
    exit_code = int(extra["returncode"]) if isinstance(extra.get("returncode"), int) else int(code.group(1))
    if isinstance(extra.get("raw_output"), str):
        return Observation(extra["raw_output"], exit_code)
    body = _OUTPUT.search(text)
    if body is not None:
        return Observation(body.group(1), exit_code)
    cut = _HEAD_TAIL.search(text)
    if cut is not None:  # v1 kept only the head and tail of a long output
        return Observation(cut.group(1) + cut.group(2), exit_code)
    raise Drop("malformed", "an observation without <output> or <output_head>/<output_tail>")

