"""Pieces every harness shares: tool-schema validation, OpenAI message shapes, seeded variation, elision.

Kept apart from `base.py` (the protocol) so the protocol stays a page long and each harness file holds only
what is specific to its format.
"""

from __future__ import annotations

import json
import random
from typing import Any

from north_lightning.formats.harnesses.base import Action, FormatError, ToolCall


def function_tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict:
    """An OpenAI-style tool schema (the shape `apply_chat_template(tools=...)` and vLLM expect)."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def validate_call(call: ToolCall, tools: list[dict[str, Any]]) -> FormatError | None:
    """Check a call against the schemas: known tool, required arguments present, no unknown arguments,
    JSON types right, enums respected. The reasons are the stable counter keys of `FormatError`."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    if call.name not in schemas:
        known = ", ".join(sorted(schemas))
        return FormatError("unknown_tool", f"Unknown tool {call.name!r}. Available tools: {known}.")
    params = schemas[call.name]
    props: dict[str, Any] = params.get("properties", {})
    for req in params.get("required", []):
        if req not in call.arguments:
            return FormatError("missing_argument", f"Tool {call.name!r} is missing required argument {req!r}.")
    for key, value in call.arguments.items():
        if key not in props:
            return FormatError("unknown_argument", f"Tool {call.name!r} has no argument {key!r}.")
        spec = props[key]
        types = _JSON_TYPES.get(spec.get("type", ""), (object,))
        bad_bool = isinstance(value, bool) and spec.get("type") in ("integer", "number")
        if not isinstance(value, types) or bad_bool:
            return FormatError("bad_argument_type", f"Argument {key!r} of {call.name!r} must be {spec.get('type')}.")
        if "minimum" in spec and value < spec["minimum"]:
            return FormatError("bad_argument_value", f"Argument {key!r} of {call.name!r} must be >= {spec['minimum']}.")
        if "enum" in spec and value not in spec["enum"]:
            allowed = ", ".join(map(str, spec["enum"]))
            return FormatError("bad_argument_value", f"Argument {key!r} of {call.name!r} must be one of: {allowed}.")
    return None


def decode_arguments(raw: Any) -> dict[str, Any] | FormatError:
    """Tool-call arguments arrive as a JSON string (OpenAI wire format) or an already-decoded dict."""
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        return FormatError("bad_json", f"Tool arguments must be a JSON object, got {type(raw).__name__}.")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return FormatError("bad_json", f"Tool arguments are not valid JSON: {exc.msg} at position {exc.pos}.")
    if not isinstance(value, dict):
        return FormatError("bad_json", "Tool arguments must be a JSON object.")
    return value


def parse_native_tool_calls(message: dict[str, Any], tools: list[dict[str, Any]]) -> Action | FormatError:
    """An assistant message dict with OpenAI `tool_calls` → an action, validated against `tools`."""
    calls: list[ToolCall] = []
    for raw in message.get("tool_calls") or []:
        fn = raw.get("function", raw)
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            return FormatError("bad_tool_call", "A tool call has no function name.")
        args = decode_arguments(fn.get("arguments"))
        if isinstance(args, FormatError):
            return args
        call = ToolCall(name, args, raw.get("id"))
        error = validate_call(call, tools)
        if error is not None:
            return error
        calls.append(call)
    if not calls:
        return FormatError("no_action", "Your response did not contain a tool call.")
    return Action(tuple(calls), thought=(message.get("content") or "").strip())


def openai_tool_calls(calls: list[ToolCall], id_prefix: str) -> list[dict[str, Any]]:
    """Calls as the OpenAI message field (arguments kept as a dict: HF chat templates serialise them)."""
    out = []
    for i, call in enumerate(calls):
        out.append(
            {
                "id": call.call_id or f"{id_prefix}_{i}",
                "type": "function",
                "function": {"name": call.name, "arguments": dict(call.arguments)},
            }
        )
    return out


def pick(options: list[str], rng: random.Random | None) -> str:
    """The canonical (first) option without a seed, else a seeded choice: template variation."""
    return options[0] if rng is None else rng.choice(options)


def maybe_shuffled(items: list[Any], rng: random.Random | None) -> list[Any]:
    """Tool description order: canonical without a seed, shuffled with one."""
    items = list(items)
    if rng is not None:
        rng.shuffle(items)
    return items


def rng_for(seed: int | None) -> random.Random | None:
    return None if seed is None else random.Random(seed)


def head_tail(text: str, limit: int) -> tuple[str, str, int] | None:
    """Split an over-long text into its first and last `limit // 2` characters and the elided count;
    None when the text fits."""
    if len(text) <= limit:
        return None
    half = limit // 2
    return text[:half], text[len(text) - half :], len(text) - 2 * half
