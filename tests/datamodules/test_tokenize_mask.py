"""Assistant-only loss: the mask is exactly the assistant's tokens (incl. end of turn), checked token by token
against an independent derivation (tokenising growing prefixes of the conversation)."""

from __future__ import annotations

import numpy as np
import pytest
from formats.sample_records import agnostic_record, chat_record, opencode_record, swe_record
from transformers import AutoTokenizer

from north_lightning.assets import tiny_tokenizer_path
from north_lightning.formats.harnesses import AGENT_HARNESSES, get_harness
from north_lightning.datamodules.tokenize import IGNORE_INDEX, chat_tokens, shifted_targets


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_tokenizer_path())


def _ids(tok, messages, tools, gen=False):
    return list(tok.apply_chat_template(messages, tools=tools, tokenize=True, add_generation_prompt=gen,
                                        return_dict=True)["input_ids"])


def _expected_mask(tok, messages, tools):
    full = _ids(tok, messages, tools)
    mask = np.zeros(len(full), dtype=bool)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _ids(tok, messages[:i], tools, gen=True)
        end = _ids(tok, messages[: i + 1], tools)
        assert full[: len(end)] == end and end[: len(start)] == start  # prefixes are stable
        mask[len(start) : len(end)] = True
    return full, mask


CASES = [(name, agnostic_record(2)) for name in AGENT_HARNESSES] + [
    ("swe_agent", swe_record()), ("opencode", opencode_record()), ("chat", chat_record(1))]


@pytest.mark.parametrize(("name", "record"), CASES, ids=[f"{n}-{r.id}" for n, r in CASES])
def test_mask_is_exactly_the_assistant_tokens(tokenizer, name, record):
    harness = get_harness(name)
    messages = harness.render(record, seed=3)
    tools = harness.tools_for(3)
    ids, mask = chat_tokens(tokenizer, messages, tools)
    full, expected = _expected_mask(tokenizer, messages, tools)
    assert ids.tolist() == full
    assert mask.tolist() == expected.tolist()
    eot = tokenizer.convert_tokens_to_ids("<|END_OF_TURN_TOKEN|>")
    chatbot = tokenizer.convert_tokens_to_ids("<|CHATBOT_TOKEN|>")
    n_turns = sum(m["role"] == "assistant" for m in messages)
    # every assistant span ends with the end-of-turn token and starts right after <|CHATBOT_TOKEN|>
    ends = [t for t in range(len(ids)) if mask[t] and (t + 1 == len(ids) or not mask[t + 1])]
    starts = [t for t in range(len(ids)) if mask[t] and (t == 0 or not mask[t - 1])]
    assert len(ends) == len(starts) == n_turns
    assert all(ids[t] == eot for t in ends) and all(ids[t - 1] == chatbot for t in starts)
    # nothing of the system / user / tool turns is trainable
    assert not any(mask[t] for t in range(len(ids)) if ids[t] in (tokenizer.convert_tokens_to_ids("<|USER_TOKEN|>"),
                                                                   tokenizer.convert_tokens_to_ids("<|TOOL_TOKEN|>")))


def test_targets_shift_inside_the_document(tokenizer):
    harness = get_harness("mini_swe_agent")
    ids, mask = chat_tokens(tokenizer, harness.render(agnostic_record(1)), None)
    targets = shifted_targets(ids, mask)
    for t in range(len(ids)):
        want = ids[t + 1] if t + 1 < len(ids) and mask[t + 1] else IGNORE_INDEX
        assert targets[t] == want
    assert targets[-1] == IGNORE_INDEX
