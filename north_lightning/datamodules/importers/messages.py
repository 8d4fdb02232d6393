"""Generic OpenAI chat trajectories (JSONL / Parquet rows with `messages`) → canonical records.

The shape is the OpenAI Chat Completions message list (as `openai` and vLLM's chat endpoint read and
write it): `{"role": "system" | "user" | "assistant" | "tool", "content", "tool_calls": [{"id", "type":
"function", "function": {"name", "arguments": <JSON string>}}], "tool_call_id"}`, with an optional
`tools` list of function schemas beside it in the row, an optional `id`, and an optional verdict
(`resolved`, `success` or `reward`).

The first user message is the task; each assistant turn with tool calls is a step whose observations are the
`tool` results of its call ids; a closing assistant text is the record's `response`. The harness is
inferred from the tool names: only `bash` / `submit` → harness-agnostic; SWE-agent's or OpenCode's tools →
fixed to that harness (OpenCode's closing text becomes its final reply); anything else → `unsupported_tool`.
Schemas given in the row are kept as the record's `tools` (what the model saw); without them the harness's
own schemas apply. A row whose verdict is false / 0 is `unresolved`; a tool call without a result is
`truncated`; a second user turn (records hold one task) is `malformed`.
"""

from __future__ import annotations

from typing import Any

from north_lightning.datamodules.importers.base import (Drop, ImportOptions, check_resolved, decode_arguments,
                                                        require, text_of)
from north_lightning.datamodules.importers.swe_agent import _record_id
from north_lightning.formats.harnesses.base import ToolCall
from north_lightning.formats.harnesses.opencode import TOOL_NAMES as OPENCODE_TOOLS
from north_lightning.formats.harnesses.swe_agent import TOOLS as SWE_AGENT_TOOL_SCHEMAS
from north_lightning.formats.records import Observation, Step, Trajectory

SWE_AGENT_TOOLS = tuple(t["function"]["name"] for t in SWE_AGENT_TOOL_SCHEMAS)
VERDICT_KEYS = ("resolved", "success", "reward")


def convert(item: Any, where: str, options: ImportOptions) -> Trajectory:
    messages = require(item, "messages", list)
    verdict_key = next((k for k in VERDICT_KEYS if item.get(k) is not None), None)
    verdict = None if verdict_key is None else bool(item[verdict_key])
    resolved = check_resolved(verdict, options, f"{verdict_key} is {item.get(verdict_key)!r}")
    tools = item.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise Drop("malformed", "'tools' is not a list of function schemas")
    system = task = response = None
    turns: list[tuple[str, list[tuple[str, ToolCall]]]] = []
    results: dict[str, str] = {}
    for i, msg in enumerate(messages):
        role = require(msg, "role", str, f"messages[{i}]")
        text = text_of(msg.get("content"))
        if role == "system":
            system = text
        elif role == "user":
            if task is not None:
                raise Drop("malformed", f"messages[{i}]: a second user turn (a record holds one task)")
            task = text
        elif role == "assistant":
            calls = [_call(raw, f"messages[{i}].tool_calls[{j}]") for j, raw in enumerate(msg.get("tool_calls") or [])]
            if calls:
                turns.append((text.strip(), calls))
            elif i == len(messages) - 1:
                response = text
            else:
                raise Drop("malformed", f"messages[{i}]: an assistant turn without tool calls before the end")
        elif role == "tool":
            results[require(msg, "tool_call_id", str, f"messages[{i}]")] = text
        else:
            raise Drop("malformed", f"messages[{i}]: unknown role {role!r}")
    if task is None:
        raise Drop("malformed", "no user message with the task")
    names = {c.name for _, calls in turns for _, c in calls}
    harness = _harness(names)
    steps = []
    for thought, calls in turns:
        pieces = [calls] if harness == "opencode" else [[c] for c in calls]  # SWE-agent: one call per reply
        for k, part in enumerate(pieces):
            missing = [cid for cid, c in part if c.name != "submit" and cid not in results]
            if missing:
                raise Drop("truncated", f"tool call {missing[0]!r} has no result")
            obs = tuple(Observation(results[cid]) for cid, c in part if c.name != "submit")
            steps.append(Step(thought if k == 0 else "", tuple(c for _, c in part), obs))
    if harness == "opencode" and response is not None:
        steps.append(Step("", (ToolCall("submit", {}),)))
    if not steps and not response:
        raise Drop("malformed", "neither tool calls nor a final answer")
    return Trajectory(
        id=str(item.get("id") or _record_id("messages", steps, task)), task=task, source=options.source,
        steps=tuple(steps), system=system, tools=tools, response=response, harness=harness,
        verified=bool(verdict), meta={"format": "messages", "origin": where, **resolved},
    )


def _call(raw: Any, where: str) -> tuple[str, ToolCall]:
    fn = require(raw, "function", dict, where)
    name = require(fn, "name", str, f"{where}.function")
    return str(raw.get("id") or where), ToolCall(name, decode_arguments(fn.get("arguments"), where))


def _harness(names: set[str]) -> str | None:
    if names <= {"bash", "submit"}:
        return None
    if names <= set(SWE_AGENT_TOOLS):
        return "swe_agent"
    if names <= set(OPENCODE_TOOLS):
        return "opencode"
    raise Drop("unsupported_tool", f"tools {sorted(names)} are neither bash/submit, SWE-agent's "
                                   f"({', '.join(SWE_AGENT_TOOLS)}) nor OpenCode's ({', '.join(OPENCODE_TOOLS)})")
