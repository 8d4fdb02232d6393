"""Generated text -> the assistant message a harness parses.

Native function-calling harnesses (SWE-agent, OpenCode) parse OpenAI-style `tool_calls`; the model writes them
in its chat template's own syntax. For the project's Cohere-style template that is a JSON list between
`<|START_ACTION|>` and `<|END_ACTION|>`. Text harnesses (Terminus-2, mini-SWE-agent) read `content` only.
A block that is not valid JSON is kept as an unparseable call, so the harness reports a format error.

Two action syntaxes: North's released template (`formats/command_a.py`: thinking blocks, `<|START_RESPONSE|>`,
calls as `{"tool_call_id", "tool_name", "parameters"}`), read by `parse_generation`, which agrees with Cohere's
parser; and the tiny tokenizer's own template (calls as `{"name", "arguments"}`, no response block). Which one
is decided by the tokenizer's chat template.
"""

from __future__ import annotations

import json
from typing import Any

from north_lightning.formats.command_a import parse_generation, to_messages, uses_command_a

ACTION_START, ACTION_END = "<|START_ACTION|>", "<|END_ACTION|>"


def response_message(text: str, tokenizer: Any = None, *, native_tools: bool = True) -> dict[str, Any]:
    """`{"role": "assistant", "content": ..., "tool_calls": [...]}` from the decoded completion (special
    tokens kept). The end-of-turn token is stripped from the content. With `native_tools=False` (text
    harnesses) the whole text is the content: nothing in it is taken for a native call."""
    eos = getattr(tokenizer, "eos_token", None)
    if eos and text.endswith(eos):
        text = text[: -len(eos)]
    if tokenizer is not None and uses_command_a(tokenizer):
        return _command_a_message(text, native_tools)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    start = text.find(ACTION_START)
    if start < 0 or not native_tools:
        return message
    end = text.find(ACTION_END, start)
    body = text[start + len(ACTION_START): end if end >= 0 else len(text)]
    message["content"] = text[:start]
    try:
        calls = json.loads(body)
        if isinstance(calls, dict):
            calls = [calls]
        if not isinstance(calls, list):
            raise ValueError("not a list")
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": c.get("name"), "arguments": c.get("arguments", {})}}
            for i, c in enumerate(calls) if isinstance(c, dict)
        ] or [{"id": "call_0", "type": "function", "function": {"name": None, "arguments": body}}]
    except (json.JSONDecodeError, ValueError):
        # keep it visible to the harness as a call whose arguments do not decode
        message["tool_calls"] = [{"id": "call_0", "type": "function", "function": {"name": "?", "arguments": body}}]
    return message


def _command_a_message(text: str, native_tools: bool) -> dict[str, Any]:
    gen = parse_generation(text)
    if gen.error is not None:
        body = text[text.find(ACTION_START) + len(ACTION_START):] if ACTION_START in text else text
        return {"role": "assistant", "content": gen.content,
                "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "?", "arguments": body}}]}
    message = to_messages(gen)
    if not native_tools and gen.tool_calls:
        # a text harness has no native calls: the action block is part of what it must parse (and reject)
        message = {"role": "assistant", "content": text}
    elif not native_tools:
        message["content"] = gen.content or ""
    return message
