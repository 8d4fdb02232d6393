"""North's released prompt format (Cohere Command A family, "cmd3") and its generation parser.

Which version: cohere-melody (Cohere's own renderer and parser, the one vLLM's Cohere parsers call) ships
three: cmd3 writes the answer between `<|START_RESPONSE|>`/`<|END_RESPONSE|>`, tool calls as a JSON list
between `<|START_ACTION|>`/`<|END_ACTION|>` and tool results between `<|START_TOOL_RESULT|>`/
`<|END_TOOL_RESULT|>`; cmd4 wraps every text in `<|START_TEXT|>` and cmd5 writes tool calls as `<cofl:...>`
XML without `<|START_ACTION|>`. vLLM (0.32, `vllm/parser/cohere_command.py`, `MODEL_TO_TAG_STYLE`) gives
Command A (`Cohere2ForCausalLM`) the `<|START_RESPONSE|>` style and the MoE (`Cohere2MoeForCausalLM`, North)
both response styles with the same `<|START_ACTION|>` tool style; the North issue's format (turn tokens,
`<|START_RESPONSE|>`, thinking, a JSON list of tool calls) is exactly cmd3, so that is the one we ship.

`chat_templates/north.jinja` renders the same text as cohere-melody 0.15.3 `render_cmd3` (its
`templates/cmd3-v1`, repo cohere-ai/melody) from OpenAI/HF-style messages, with `{% generation %}` around
everything the assistant writes (thinking, action, response, end-of-turn) for the loss mask. Tool calls are
numbered 0, 1, ... over the conversation as melody numbers them; a tool message's result goes to the call
with its `tool_call_id` in the latest assistant turn (or to the call at its position). String `arguments`
are written as given, so pass them as dicts (melody re-serialises them).

`parse_generation` reads a completion the way melody's `PyFilter.cmd3()` does on the text the template
teaches, and refuses what it cannot read completely (a cut-off or broken action block) with a reason
instead of returning half a call: an RL rollout must score a malformed action as a format error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATE_PATH = Path(__file__).resolve().parent / "chat_templates" / "north.jinja"

START_THINKING, END_THINKING = "<|START_THINKING|>", "<|END_THINKING|>"
START_ACTION, END_ACTION = "<|START_ACTION|>", "<|END_ACTION|>"
START_RESPONSE, END_RESPONSE = "<|START_RESPONSE|>", "<|END_RESPONSE|>"
END_OF_TURN = "<|END_OF_TURN_TOKEN|>"
# Every control token the template writes (the tokenizer must hold each as one special token).
SPECIAL_TOKENS = (
    "<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", END_OF_TURN, "<|SYSTEM_TOKEN|>", "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>", START_THINKING, END_THINKING, START_ACTION, END_ACTION, START_RESPONSE, END_RESPONSE,
    "<|START_TOOL_RESULT|>", "<|END_TOOL_RESULT|>",
)
_CITATION = re.compile(r"<co>(.*?)</co: [^>]*>", re.DOTALL)
# Unicode White_Space (what melody trims: Rust's char::is_whitespace; Python's isspace adds \x1c-\x1f)
WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
             "\u2028\u2029\u202f\u205f\u3000"


@lru_cache(maxsize=1)
def north_template() -> str:
    return TEMPLATE_PATH.read_text()


def uses_command_a(tokenizer: Any) -> bool:
    """Whether this tokenizer's chat template writes North's action syntax (`tool_name` / `parameters`)."""
    return START_RESPONSE in (getattr(tokenizer, "chat_template", None) or "")


def with_north_template(tokenizer: Any) -> Any:
    """Give a HF tokenizer the North template, adding any of its control tokens it lacks as special tokens
    (the tiny tokenizer lacks the thinking / response / tool-result ones). Returns the same tokenizer."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = north_template()
    return tokenizer


@dataclass
class Generation:
    """One parsed completion: thinking, answer text, tool calls (`{"name", "arguments"}`), or an error."""

    thinking: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def _strip_citations(text: str) -> str:
    return _CITATION.sub(r"\1", text)


def parse_calls(body: str) -> list[dict[str, Any]]:
    """The JSON list between the action tokens → `[{"name", "arguments", "id"}]`; raises ValueError."""
    try:
        calls = json.loads(body)
    except json.JSONDecodeError as err:
        raise ValueError(f"action is not valid JSON: {err.msg} at char {err.pos}") from None
    if not isinstance(calls, list) or not calls:
        raise ValueError("action must be a non-empty JSON list of tool calls")
    out = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("tool_name"), str) or not call["tool_name"]:
            raise ValueError(f"tool call {i} has no 'tool_name' string")
        unknown = set(call) - {"tool_call_id", "tool_name", "parameters"}
        if unknown:  # melody drops such a call; an action that lost a call must not count as valid
            raise ValueError(f"tool call {i} ('{call['tool_name']}') has keys other than 'tool_call_id', "
                             f"'tool_name', 'parameters': {sorted(unknown)}")
        args = call.get("parameters", {})  # melody reads a missing 'parameters' as no arguments
        if not isinstance(args, dict):
            raise ValueError(f"tool call {i} ('{call['tool_name']}'): 'parameters' must be a JSON object")
        out.append({"id": str(call.get("tool_call_id", i)), "name": call["tool_name"], "arguments": args})
    return out


def parse_generation(text: str) -> Generation:
    """Split a completion (special tokens kept) into thinking, response and tool calls.

    Text outside the blocks counts as response text, as melody reads it; after `<|END_RESPONSE|>` nothing
    more is read; like melody, the thinking loses surrounding whitespace and the answer trailing whitespace
    (so text ending in whitespace does not survive a render → parse round trip, with melody either).
    A missing `<|END_ACTION|>`, invalid JSON, or a call without a name or with unknown keys is an error."""
    if text.endswith(END_OF_TURN):
        text = text[: -len(END_OF_TURN)]
    gen = Generation()
    content: list[str] = []
    rest = text
    while rest:
        starts = {tok: rest.find(tok) for tok in (START_THINKING, START_ACTION, START_RESPONSE, END_RESPONSE)}
        found = {tok: i for tok, i in starts.items() if i >= 0}
        if not found:
            content.append(rest)
            break
        tok = min(found, key=found.get)
        content.append(rest[: found[tok]])
        if tok == END_RESPONSE:  # a stray end of the answer ends it
            break
        rest = rest[found[tok] + len(tok):]
        if tok == START_THINKING:
            end = rest.find(END_THINKING)
            gen.thinking = (gen.thinking or "") + _strip_citations(rest if end < 0 else rest[:end])
            rest = "" if end < 0 else rest[end + len(END_THINKING):]
        elif tok == START_RESPONSE:
            end = rest.find(END_RESPONSE)
            content.append(rest if end < 0 else rest[:end])
            break
        else:
            end = rest.find(END_ACTION)
            if end < 0:
                gen.error = "action not closed with <|END_ACTION|> (cut off?)"
                break
            try:
                gen.tool_calls += parse_calls(rest[:end])
            except ValueError as err:
                gen.error = str(err)
                break
            rest = rest[end + len(END_ACTION):]
    # melody trims the thinking on both sides and the answer at its end
    gen.content = _strip_citations("".join(content)).rstrip(WHITESPACE) or None
    gen.thinking = (gen.thinking or "").strip(WHITESPACE) or None
    return gen


def to_messages(gen: Generation) -> dict[str, Any]:
    """The assistant message a harness parses (OpenAI shape: content, reasoning_content, tool_calls)."""
    msg: dict[str, Any] = {"role": "assistant", "content": gen.content}
    if gen.thinking is not None:
        msg["reasoning_content"] = gen.thinking
    if gen.tool_calls:
        msg["tool_calls"] = [{"id": c["id"], "type": "function",
                              "function": {"name": c["name"], "arguments": c["arguments"]}} for c in gen.tool_calls]
    return msg
