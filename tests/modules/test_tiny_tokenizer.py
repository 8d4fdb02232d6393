"""The shipped tiny tokenizer: size, special tokens, and an exact assistant mask from the chat template."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from helpers import expected_assistant_mask
from north_lightning.assets import tiny_tokenizer_path

TOOLS = [{"type": "function", "function": {"name": "bash", "description": "Run a shell command.",
          "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]

CONVERSATION = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Write 7 * 6 to /app/answer.txt"},
    {"role": "assistant", "content": "I'll compute it in the shell.",
     "tool_calls": [{"type": "function", "function": {"name": "bash",
                                                      "arguments": {"command": "echo $((7*6)) > /app/answer.txt"}}}]},
    {"role": "tool", "content": "(exit code 0)"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"type": "function", "function": {"name": "bash", "arguments": '{"command": "cat /app/answer.txt"}'}},
                    {"type": "function", "function": {"name": "submit", "arguments": {}}}]},
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "The answer 42 is written."},
]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(tiny_tokenizer_path())


def test_vocab_and_special_tokens(tok) -> None:
    assert len(tok) <= 4096
    assert tok.convert_tokens_to_ids("<|END_OF_TURN_TOKEN|>") == tok.eos_token_id
    assert tok.bos_token == "<BOS_TOKEN>" and tok.pad_token == "<PAD>"
    # Byte-level: any text round-trips, and plain encoding adds no special tokens.
    text = "def f(x):\n    return x ** 2  # ünïcode ✓\n$ ls -la /tmp\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok(text)["input_ids"] == ids


def test_assistant_mask_is_exact_token_by_token(tok) -> None:
    out = tok.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    assert mask == expected_assistant_mask(tok, ids)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    assert trained == (
        "I'll compute it in the shell.<|START_ACTION|>[{\"name\": \"bash\", \"arguments\": "
        "{\"command\": \"echo $((7*6)) > /app/answer.txt\"}}]<|END_ACTION|><|END_OF_TURN_TOKEN|>"
        "<|START_ACTION|>[{\"name\": \"bash\", \"arguments\": {\"command\": \"cat /app/answer.txt\"}}, "
        "{\"name\": \"submit\", \"arguments\": {}}]<|END_ACTION|><|END_OF_TURN_TOKEN|>"
        "The answer 42 is written.<|END_OF_TURN_TOKEN|>"
    )
    assert sum(mask) == len(tok.encode(trained, add_special_tokens=False))


def test_tools_render_into_system_turn(tok) -> None:
    text = tok.apply_chat_template(CONVERSATION[1:2], tools=TOOLS, tokenize=False)
    assert text.startswith("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|># Tools\n")
    assert '"name": "bash"' in text.split("<|END_OF_TURN_TOKEN|>")[0]
    no_tools = tok.apply_chat_template(CONVERSATION[1:2], tokenize=False)
    assert no_tools == "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Write 7 * 6 to /app/answer.txt<|END_OF_TURN_TOKEN|>"


def test_generation_prompt_and_prefix_consistency(tok) -> None:
    """The prompt rendered with add_generation_prompt is a token prefix of the full conversation, so rollout
    prompts and SFT documents tokenise the same way."""
    prompt = tok.apply_chat_template(CONVERSATION[:2], tools=TOOLS, add_generation_prompt=True, tokenize=True,
                                     return_dict=True)["input_ids"]
    full = tok.apply_chat_template(CONVERSATION[:3], tools=TOOLS, tokenize=True, return_dict=True)["input_ids"]
    assert tok.convert_ids_to_tokens(prompt[-2:]) == ["<|START_OF_TURN_TOKEN|>", "<|CHATBOT_TOKEN|>"]
    assert full[: len(prompt)] == prompt


def test_unknown_role_is_an_error(tok) -> None:
    with pytest.raises(Exception, match="unsupported chat role: narrator"):
        tok.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)
