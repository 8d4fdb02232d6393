"""OpenHands trajectories as released with SWE-Gym → canonical records.

Follows the rows of SWE-Gym's released OpenHands trajectories (SWE-Gym/OpenHands-Sampled-Trajectories and
SWE-Gym/OpenHands-SFT-Trajectories on the HF hub, produced by OpenHands' CodeAct agent with native function
calling, `openhands/agenthub/codeact_agent/function_calling.py` of OpenHands 0.1x): a row holds
`instance_id`, `messages` (OpenAI chat messages: `system`, the `user` prompt with the issue inside
`<issue_description>` / `<pr_description>`, `assistant` turns with `tool_calls` whose arguments are JSON
strings, `tool` results with `tool_call_id`; content is a string or a list of `{"type": "text", "text"}`
parts) and `resolved`. The same shape is read from rows of later OpenHands releases that name the messages
column `trajectory` and give `resolved` as 0/1 (e.g. nebius/SWE-rebench-openhands-trajectories).

OpenHands' tools map as: `execute_bash{command}` → `bash{command}`; `str_replace_editor` (the same tool and
arguments as SWE-agent's, so the record is fixed to the `swe_agent` harness); `finish` → `submit{}`; `think`
adds its `thought` to the step's thought. Other tools (`execute_ipython_cell`, `browser`,
`web_read`, an interactive `is_input` bash call) exist in no sandbox of ours: `unsupported_tool`. Tool results
lose OpenHands' `[Command finished with exit code N]` trailer, whose N becomes the exit code. Rows with
`resolved` false are `unresolved`; a trajectory without `finish` is `truncated`.
"""

from __future__ import annotations

import re
from typing import Any

from north_lightning.datamodules.importers.base import (Drop, ImportOptions, check_resolved, decode_arguments, require,
                                                        task_text, text_of)
from north_lightning.datamodules.importers.swe_agent import _record_id
from north_lightning.formats.harnesses.base import ToolCall
from north_lightning.formats.records import Observation, Step, Trajectory

_EXIT = re.compile(r"\n*\[Command finished with exit code (-?\d+)\]\s*$")
_TASK_PATTERNS = (re.compile(r"<issue_description>\n?(.*?)\n?</issue_description>", re.DOTALL),
                  re.compile(r"<pr_description>\n?(.*?)\n?</pr_description>", re.DOTALL))
_EDITOR_ARGS = ("command", "path", "file_text", "old_str", "new_str", "insert_line", "view_range")


def convert(item: Any, where: str, options: ImportOptions) -> Trajectory:
    if not isinstance(item, dict):
        raise Drop("malformed", "row is not an object")
    key = "messages" if "messages" in item else "trajectory"
    messages = require(item, key, list)
    resolved_raw = item.get("resolved")
    resolved = check_resolved(None if resolved_raw is None else bool(resolved_raw), options,
                              f"resolved is {resolved_raw!r}")
    system = task = None
    steps: list[Step] = []
    results: dict[str, tuple[str, int | None]] = {}
    order: list[tuple[str, list[tuple[str, ToolCall]]]] = []  # (thought, [(call id, call)])
    for i, msg in enumerate(messages):
        role = require(msg, "role", str, f"{key}[{i}]")
        text = text_of(msg.get("content"))
        if role == "system":
            system = text
        elif role == "user" and task is None:
            task = task_text(text, _TASK_PATTERNS)
        elif role == "assistant":
            order.append(_assistant(msg, text, f"{key}[{i}]"))
        elif role == "tool":
            call_id = require(msg, "tool_call_id", str, f"{key}[{i}]")
            results[call_id] = _result(text)
        elif role != "user":
            raise Drop("malformed", f"{key}[{i}]: unknown role {role!r}")
    if task is None:
        raise Drop("malformed", "no user message with the task")
    for thought, calls in order:
        # a text-only reply (OpenHands then asks the agent to continue) is no action; parallel calls become
        # one step each (SWE-agent's format, which renders the editor, makes one call per reply)
        for k, (cid, call) in enumerate(calls):
            if call.name != "submit" and cid not in results:
                raise Drop("truncated", "a tool call has no result (the episode was cut)")
            obs = () if call.name == "submit" else (Observation(*results[cid]),)
            steps.append(Step(thought if k == 0 else "", (call,), obs))
    if not steps or steps[-1].calls[-1].name != "submit":
        raise Drop("truncated", "the trajectory does not end with finish")
    editor = any(c.name == "str_replace_editor" for s in steps for c in s.calls)
    return Trajectory(
        id=_record_id(str(item.get("instance_id") or "openhands"), steps, str(item.get("trajectory_id") or "")),
        task=task, source=options.source, steps=tuple(steps), system=system,
        harness="swe_agent" if editor else None, verified=bool(resolved_raw),
        meta={"format": "openhands", "origin": where, "instance_id": item.get("instance_id"), **resolved},
    )


def _assistant(msg: dict[str, Any], text: str, where: str) -> tuple[str, list[tuple[str, ToolCall]]]:
    thoughts = [text.strip()] if text.strip() else []
    calls: list[tuple[str, ToolCall]] = []
    for j, raw in enumerate(msg.get("tool_calls") or []):
        fn = require(raw, "function", dict, f"{where}.tool_calls[{j}]")
        name = require(fn, "name", str, f"{where}.tool_calls[{j}].function")
        args = decode_arguments(fn.get("arguments"), f"{where}.tool_calls[{j}]")
        call_id = str(raw.get("id") or f"{where}:{j}")
        if name == "think":
            thoughts.append(str(args.get("thought", "")).strip())
        elif name == "finish":
            calls.append((call_id, ToolCall("submit", {})))
        elif name in ("execute_bash", "bash"):
            if str(args.get("is_input", "false")).lower() == "true":
                raise Drop("unsupported_tool", f"{where}: execute_bash with is_input (keys to a running process)")
            calls.append((call_id, ToolCall("bash", {"command": require(args, "command", str, where)})))
        elif name == "str_replace_editor":
            kept = {k: v for k, v in args.items() if k in _EDITOR_ARGS and v is not None}
            calls.append((call_id, ToolCall("str_replace_editor", kept)))
        else:
            raise Drop("unsupported_tool", f"{where}: tool {name!r}")
    if any(c.name == "submit" for _, c in calls) and len(calls) > 1:
        calls = [(cid, c) for cid, c in calls if c.name != "submit"] + [(cid, c) for cid, c in calls if c.name == "submit"]
    return "\n".join(t for t in thoughts if t), calls


def _result(text: str) -> tuple[str, int | None]:
    text = text.removeprefix("OBSERVATION:\n")
    found = _EXIT.search(text)
    if found is None:
        return text, None
    return text[: found.start()], int(found.group(1))

