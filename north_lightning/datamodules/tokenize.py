"""Rendered messages → token ids and next-token targets with assistant-only loss.

The loss mask comes from the tokenizer's chat template (`{% generation %}` blocks, asked for with
`return_assistant_tokens_mask=True`), never from our own guess of where a turn starts: the template that
formats the data at training time is the one the model will be prompted with, so the mask cannot drift from
the format. Tool schemas go through `tools=`, exactly as at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from north_lightning.model.head import IGNORE_INDEX



@dataclass(frozen=True)
class Document:
    """One tokenised sample, ready to pack. `targets[t]` is the next token where it is trainable, else -100,
    so the shift happens here and never crosses into another document."""

    input_ids: np.ndarray  # [L] int32
    targets: np.ndarray  # [L] int32
    component: int  # index of its mixture component
    record_id: str
    source: str = ""

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def num_trainable(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def chat_tokens(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and the assistant mask (1 on every token the template generated for the assistant,
    including its end-of-turn token)."""
    out = tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = np.asarray(out["input_ids"], dtype=np.int32)
    mask = np.asarray(out["assistant_masks"], dtype=bool)
    if mask.shape != ids.shape:
        raise ValueError("the chat template's assistant mask does not match its tokens")
    return ids, mask


def shifted_targets(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Position t learns token t+1 exactly when token t+1 is the assistant's."""
    targets = np.full(ids.shape, IGNORE_INDEX, dtype=np.int32)
    targets[:-1] = np.where(mask[1:], ids[1:], IGNORE_INDEX)
    return targets


def control_strings(tokenizer: Any) -> tuple[str, ...]:
    """The tokenizer's special tokens as strings: they must never occur inside message content."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "special", False):
            specials.add(str(tok.content))
    return tuple(sorted(specials))


def chat_tokens_batch(tokenizer: Any, conversations: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]],
                      **template_kwargs: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """`chat_tokens` for many conversations at once: the template renders each (Jinja is per conversation),
    the fast tokenizer encodes all texts in one batched call, and the `{% generation %}` character spans become
    token masks through the encodings' char→token map, as `apply_chat_template` does for one."""
    from transformers.utils.chat_template_utils import render_jinja_template

    kwargs = {**tokenizer.special_tokens_map, **template_kwargs}
    texts, spans = [], []
    for messages, tools in conversations:
        rendered, generation = render_jinja_template(conversations=[messages], tools=tools or None,
                                                     chat_template=tokenizer.chat_template,
                                                     return_assistant_tokens_mask=True, **kwargs)
        texts.append(rendered[0])
        spans.append(generation[0])
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False)
    out = []
    for i, ids in enumerate(enc["input_ids"]):
        mask = np.zeros(len(ids), dtype=bool)
        for start_char, end_char in spans[i]:
            start, end = enc.char_to_token(i, start_char), enc.char_to_token(i, end_char - 1)
            if start is None:
                break
            mask[start: (end + 1 if end is not None else len(ids))] = True
        out.append((np.asarray(ids, dtype=np.int32), mask))
    return out
