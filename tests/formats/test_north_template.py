"""North's chat template and generation parser against Cohere's own renderer and parser (cohere-melody).

The tokenizer is the project's tiny one given the North template and its control tokens
(`with_north_template`), so every control string is one special token as in the released tokenizer.
"""

from __future__ import annotations

import json
import random
from typing import Any

import cohere_melody
import pytest
from transformers import AutoTokenizer

from helpers import expected_assistant_mask
from north_lightning.assets import tiny_tokenizer_path
from north_lightning.formats.command_a import (
    END_ACTION,
    START_ACTION,
    parse_generation,
    to_messages,
    with_north_template,
)

ALPHABET = "abcdefgh xyz_-.,:;!?/\\\"'{}[]()=+*#$%&|\n\tééü✓中\u0001"
N_CONVERSATIONS = 150


@pytest.fixture(scope="module")
def tok():
    return with_north_template(AutoTokenizer.from_pretrained(tiny_tokenizer_path()))


def _text(rng: random.Random, lo: int = 1, hi: int = 40) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(lo, hi))).strip() or "x"


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(["str", "int", "float", "bool", "null", "list", "dict"] if depth < 2 else ["str", "int"])
    if kind == "str":
        return _text(rng, 0, 30)
    if kind == "int":
        return rng.randint(-10**6, 10**6)
    if kind == "float":
        return round(rng.uniform(-100, 100), 3)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{j}_{_text(rng, 1, 5)}": _value(rng, depth + 1) for j in range(rng.randint(0, 3))}


TOOL_NAMES = ["bash", "str_replace_editor", "submit", "read_file", "find"]


def _tools(rng: random.Random) -> list[dict[str, Any]]:
    tools = []
    for name in rng.sample(TOOL_NAMES, rng.randint(1, len(TOOL_NAMES))):
        params = {"type": "object", "properties": {p: {"type": "string", "description": _text(rng)}
                                                   for p in rng.sample(["command", "path", "old_str", "new_str"], 2)},
                  "required": []}
        tools.append({"type": "function", "function": {"name": name, "description": _text(rng, 0, 60), "parameters": params}})
    return tools


def conversation(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, dict[str, Any]]:
    """A random multi-turn agent conversation in canonical form (plans as `reasoning_content`)."""
    options: dict[str, Any] = {}
    if rng.random() < 0.3:
        options["safety_mode"] = rng.choice(["contextual", "strict", "none"])
    if rng.random() < 0.4:
        options["reasoning"] = rng.choice(["enabled", "disabled"])
    if rng.random() < 0.3:
        options["citation_quality"] = rng.choice(["on", "off"])
    if rng.random() < 0.2:
        options["dev_instruction"] = _text(rng)
    if rng.random() < 0.15:
        options["skip_preamble"] = True
    tools = _tools(rng) if rng.random() < 0.8 else None
    msgs: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": _text(rng)})
    call_no = 0
    for _ in range(rng.randint(1, 2)):
        msgs.append({"role": "user", "content": _text(rng)})
        for _ in range(rng.randint(0, 3) if tools else 0):
            calls = []
            for _ in range(rng.randint(1, 3)):
                args = {p: _value(rng) for p in rng.sample(["command", "path", "old_str", "new_str", "n"], rng.randint(0, 3))}
                calls.append({"id": f"call_{call_no}", "type": "function",
                              "function": {"name": rng.choice(tools)["function"]["name"], "arguments": args}})
                call_no += 1
            step: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
            if rng.random() < 0.7:
                step["reasoning_content"] = _text(rng)
            msgs.append(step)
            results = []
            for c in calls:
                content: Any = rng.choice([_text(rng), "Traceback (most recent call last):\n  Error: " + _text(rng),
                                           "(exit code 1)", ""])
                if rng.random() < 0.15:
                    content = [{"type": "text", "text": _text(rng)} for _ in range(2)]
                results.append({"role": "tool", "tool_call_id": c["id"], "content": content})
            if rng.random() < 0.3:
                rng.shuffle(results)  # results in another order are matched by id
            msgs += results
        final: dict[str, Any] = {"role": "assistant", "content": _text(rng, 1, 80)}
        if rng.random() < 0.5:
            final["reasoning_content"] = _text(rng)
        msgs.append(final)
    return msgs, tools, options


def to_melody(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, options: dict[str, Any]) -> dict[str, Any]:
    """The same conversation as a `render_cmd3` config, mapped as vLLM's Cohere renderer maps OpenAI
    messages (vllm/renderers/cohere.py: assistant → chatbot, reasoning → a leading thinking block,
    arguments → a JSON string, tool_call_id kept)."""
    out = []
    for m in messages:
        content = m.get("content")
        blocks = [] if content is None else ([{"type": "text", "text": content}] if isinstance(content, str) else
                                              [{"type": "text", "text": p["text"]} for p in content])
        role = "chatbot" if m["role"] == "assistant" else m["role"]
        if role == "chatbot" and m.get("reasoning_content"):
            blocks.insert(0, {"type": "thinking", "thinking": m["reasoning_content"]})
        msg: dict[str, Any] = {"role": role, "content": blocks,
                               "tool_calls": [{"id": c["id"], "name": c["function"]["name"],
                                               "parameters": json.dumps(c["function"]["arguments"], ensure_ascii=False)}
                                              for c in m.get("tool_calls") or []]}
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    config: dict[str, Any] = {"messages": out}
    if tools:
        config["available_tools"] = [{"name": t["function"]["name"], "description": t["function"]["description"],
                                      "parameters": t["function"]["parameters"]} for t in tools]
    for ours, theirs in (("safety_mode", "safety_mode"), ("reasoning", "reasoning_type"),
                         ("citation_quality", "citation_quality"), ("dev_instruction", "dev_instruction"),
                         ("skip_preamble", "skip_preamble")):
        if ours in options:
            config[theirs] = options[ours]
    return config


def _render(tok, msgs, tools, options, **kw):
    return tok.apply_chat_template(msgs, tools=tools, **options, **kw)


def test_renders_byte_identical_to_melody_cmd3(tok) -> None:
    rng = random.Random(0)
    for i in range(N_CONVERSATIONS):
        msgs, tools, options = conversation(rng)
        ours = _render(tok, msgs, tools, options, tokenize=False, add_generation_prompt=True)
        reference = cohere_melody.render_cmd3(to_melody(msgs, tools, options))
        if ours != reference:
            at = next(j for j, (a, b) in enumerate(zip(ours + "\0", reference + "\1")) if a != b)
            pytest.fail(f"conversation {i} ({options}) differs at char {at}: ours {ours[at - 80:at + 80]!r} "
                        f"reference {reference[at - 80:at + 80]!r}")


def _assistant_spans(tok, msgs, tools, options) -> tuple[list[int], list[int], list[str]]:
    out = _render(tok, msgs, tools, options, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    spans, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur, skip_special_tokens=False))
            cur = []
    if cur:
        spans.append(tok.decode(cur, skip_special_tokens=False))
    return ids, mask, spans


def test_assistant_mask_matches_independent_derivation(tok) -> None:
    rng = random.Random(1)
    for _ in range(40):
        msgs, tools, options = conversation(rng)
        ids, mask, spans = _assistant_spans(tok, msgs, tools, options)
        assert mask == expected_assistant_mask(tok, ids)
        assert len(spans) == sum(m["role"] == "assistant" for m in msgs)
        assert all(s.endswith("<|END_OF_TURN_TOKEN|>") for s in spans)


def _canonical(m: dict[str, Any], thinking_rendered: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": m.get("content")}
    if m.get("reasoning_content") and thinking_rendered:
        out["reasoning_content"] = m["reasoning_content"]
    if m.get("tool_calls"):
        out["tool_calls"] = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in m["tool_calls"]]
    return out


def _ours(gen_msg: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in gen_msg.items() if k != "tool_calls"}
    if gen_msg.get("tool_calls"):
        out["tool_calls"] = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in gen_msg["tool_calls"]]
    return out


def test_parse_of_render_is_identity(tok) -> None:
    rng = random.Random(2)
    checked = 0
    for _ in range(60):
        msgs, tools, options = conversation(rng)
        _, _, spans = _assistant_spans(tok, msgs, tools, options)
        thinking_rendered = options.get("reasoning") != "disabled"
        for m, text in zip([m for m in msgs if m["role"] == "assistant"], spans):
            gen = parse_generation(text)
            assert gen.error is None, (text, gen.error)
            assert _ours(to_messages(gen)) == _canonical(m, thinking_rendered)
            checked += 1
    assert checked > 100


def _melody(text: str) -> tuple[str | None, str | None, list[tuple[str, Any]]]:
    r = cohere_melody.PyFilter.cmd3().process_full_text(text)
    calls = []
    for c in r.tool_calls:
        try:
            args = json.loads(c.arguments) if c.arguments else {}
        except json.JSONDecodeError:
            args = ("undecodable", c.arguments)
        calls.append((c.name, args))
    return r.reasoning, r.content, calls


def _parsed(text: str) -> tuple[str | None, str | None, list[tuple[str, Any]]]:
    g = parse_generation(text)
    return g.thinking, g.content, [(c["name"], c["arguments"]) for c in g.tool_calls]


def _generations(rng: random.Random, tok, n: int) -> list[str]:
    texts = []
    while len(texts) < n:
        msgs, tools, options = conversation(rng)
        texts += [s[: -len("<|END_OF_TURN_TOKEN|>")] for s in _assistant_spans(tok, msgs, tools, options)[2]]
    return texts[:n]


def test_parser_agrees_with_melody_on_generated_text(tok) -> None:
    for text in _generations(random.Random(3), tok, 200):
        assert parse_generation(text).error is None
        assert _parsed(text) == _melody(text), text


def test_parser_on_malformed_generations_never_disagrees_where_it_accepts(tok) -> None:
    """Cut-off, corrupted and garbage generations: where ours accepts, melody reads the same; a generation cut
    inside an action block is an error for us, and melody too can only read part of it."""
    rng = random.Random(4)
    accepted = rejected = 0
    for text in _generations(rng, tok, 150):
        variants = [text[: rng.randint(0, len(text))] for _ in range(3)]
        if START_ACTION in text:
            body_start = text.index(START_ACTION) + len(START_ACTION)
            cut = rng.randint(body_start, text.index(END_ACTION) - 1)
            variants.append(text[:cut])
            k = rng.randint(body_start, text.index(END_ACTION) - 1)
            variants.append(text[:k] + text[k + 1:])  # one character lost inside the JSON
            variants.append(text[:body_start] + "not json" + text[text.index(END_ACTION):])
        variants.append(text.replace("<|START_RESPONSE|>", "", 1))
        for v in variants:
            gen = parse_generation(v)
            if gen.error is None:
                accepted += 1
                assert _parsed(v) == _melody(v), v
            else:
                rejected += 1
                # we refuse an action that is cut off (no <|END_ACTION|>, as when generation hit max_tokens) even
                # where melody streams out the calls it saw; a closed one we refuse only where melody cannot
                # read the calls of the intact generation from it either
                # read where it is malformed, as a JSON parser independent of ours sees it
                ref_calls = _melody(v)[2]
                assert START_ACTION in v, (v, gen.error)
                body = v[v.rindex(START_ACTION) + len(START_ACTION):]
                cut_off = END_ACTION not in body
                try:
                    calls = json.loads(body[: body.index(END_ACTION)]) if not cut_off else None
                    off_grammar = not isinstance(calls, list) or any(
                        not isinstance(c, dict) or set(c) - {"tool_call_id", "tool_name", "parameters"} for c in calls)
                except json.JSONDecodeError:
                    off_grammar = True
                assert cut_off or off_grammar or ref_calls != _melody(text)[2] or not ref_calls or \
                    any(isinstance(a, tuple) for _, a in ref_calls), (v, gen.error, _melody(v))
    assert accepted > 100 and rejected > 50


def test_parser_errors_name_the_problem() -> None:
    assert "END_ACTION" in parse_generation('<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "bash"').error
    assert "JSON" in parse_generation("<|START_ACTION|>[oops]<|END_ACTION|>").error
    assert "tool_name" in parse_generation('<|START_ACTION|>[{"name": "bash"}]<|END_ACTION|>').error
    assert "parameters" in parse_generation('<|START_ACTION|>[{"tool_name": "b", "parameters": 1}]<|END_ACTION|>').error


def test_rollout_response_message_reads_north_actions(tok) -> None:
    from north_lightning.formats.harnesses import get_harness
    from north_lightning.envs.response import response_message

    text = ('<|START_THINKING|>List files first.<|END_THINKING|><|START_ACTION|>[\n    {"tool_call_id": "0", '
            '"tool_name": "bash", "parameters": {"command": "ls -la"}}\n]<|END_ACTION|><|END_OF_TURN_TOKEN|>')
    msg = response_message(text, tok)
    assert msg["reasoning_content"] == "List files first." and msg["content"] is None
    assert msg["tool_calls"][0]["function"] == {"name": "bash", "arguments": {"command": "ls -la"}}
    action = get_harness("swe_agent").parse(msg)
    assert [c.name for c in action.tool_calls] == ["bash"] and action.tool_calls[0].arguments == {"command": "ls -la"}
    cut = response_message(text[: text.index("]<|END_ACTION|>")], tok)
    assert cut["tool_calls"][0]["function"]["name"] == "?"  # the harness reports it as a format error
    answer = response_message("<|START_RESPONSE|>Done: 42.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", tok, native_tools=False)
    assert answer == {"role": "assistant", "content": "Done: 42."}
