"""Sample-level filters: every dropped sample is counted under a stable reason, nothing disappears silently.

The checks run on a record after it has been rendered into one harness's messages, because that is what the
model will be trained on: a tool call that the harness's own parser rejects is an invalid tool call, whatever
the source claimed. Reasons (the keys of the JSON report):

- `invalid_tool_call:<reason>`  an assistant turn the harness parser rejects (unknown tool, bad JSON,
                                missing/unknown arguments, wrong types, several actions where one is allowed)
- `unrenderable`                the record cannot be expressed in the harness (e.g. two calls in one
                                mini-SWE-agent step, or a tool the harness lacks)
- `erroneous_whitespace`        trailing-space runs in assistant text, or an edit whose old/new text mixes
                                tab and space indentation (such edits rarely apply)
- `malformed_special_tokens`    chat-template control strings inside any message content or argument
- `hallucinated_citation`       a file path or URL in the assistant's free text that appears nowhere in
                                the task, the observations or the agent's own tool calls
- `over_long`                   more tokens than the stage's context (`seq_len`)
- `no_trainable_tokens`         nothing for the loss to learn from
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from north_lightning.formats.harnesses.base import FormatError

# Control strings of common chat templates; the tokenizer's own special tokens are added at run time.
COMMON_CONTROL_STRINGS = (
    "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|USER_TOKEN|>",
    "<|SYSTEM_TOKEN|>", "<|START_ACTION|>", "<|END_ACTION|>", "<|im_start|>", "<|im_end|>",
    "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
)
_TRAILING_RUN = re.compile(r"[ \t]{3,}$", re.MULTILINE)
_MIXED_INDENT = re.compile(r"^(?: +\t|\t+ )", re.MULTILINE)
_URL = re.compile(r"https?://[^\s)\"'<>`\]]+")
_PATH = re.compile(r"(?<![\w.:/])(/(?:[\w.-]+/)*[\w-]+\.[A-Za-z0-9]{1,8})\b")
EDIT_TEXT_KEYS = ("old_str", "new_str", "oldString", "newString")
CHECKS = ("invalid_tool_calls", "whitespace", "special_tokens", "citations", "over_long")


class FilterError(ValueError):
    """Raised instead of dropping when filters are configured to fail."""


@dataclass
class FilterConfig:
    """Which checks run, and whether a failing sample is dropped (counted) or stops the run."""

    checks: tuple[str, ...] = CHECKS
    on_reject: str = "drop"  # drop | fail

    def __post_init__(self) -> None:
        unknown = set(self.checks) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown filter checks {sorted(unknown)}; known: {list(CHECKS)}")
        if self.on_reject not in ("drop", "fail"):
            raise ValueError(f"on_reject must be 'drop' or 'fail', got {self.on_reject!r}")


@dataclass
class FilterReport:
    """Per-reason counters overall and per mixture component, plus a few examples, written as JSON."""

    kept: Counter = field(default_factory=Counter)
    dropped: dict[str, Counter] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, component: str, reason: str, example: str) -> None:
        self.dropped.setdefault(component, Counter())[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < 5:
            bucket.append(example)

    def totals(self) -> Counter:
        total: Counter = Counter()
        for counts in self.dropped.values():
            total.update(counts)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": dict(self.kept),
            "dropped_total": dict(self.totals()),
            "dropped_by_component": {k: dict(v) for k, v in self.dropped.items()},
            "examples": self.examples,
        }

    def write(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _assistant_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [c.get("function", c) for c in message.get("tool_calls") or []]


def check_messages(
    harness: Any,
    trajectory: Any,
    messages: list[dict[str, Any]],
    checks: tuple[str, ...],
    control_strings: tuple[str, ...] = COMMON_CONTROL_STRINGS,
) -> str | None:
    """The first reason this rendered sample must be rejected, or None when it passes."""
    assistant = [m for m in messages if m["role"] == "assistant"]
    if "invalid_tool_calls" in checks:
        for m in assistant:
            result = harness.parse(m)
            if isinstance(result, FormatError):
                return f"invalid_tool_call:{result.reason}"
    if "special_tokens" in checks:
        for m in messages:
            texts = _strings(m.get("content")) + [s for c in _assistant_calls(m) for s in _strings(c.get("arguments"))]
            if any(tok in text for text in texts for tok in control_strings):
                return "malformed_special_tokens"
    if "whitespace" in checks:
        # the record's own text too: a harness may embed it escaped (Terminus-2's JSON) where runs hide
        texts = [m.get("content") or "" for m in assistant] + [s.thought for s in trajectory.steps]
        if any(_TRAILING_RUN.search(t) for t in texts + [trajectory.response or ""]):
            return "erroneous_whitespace"
        for m in assistant:
            for call in _assistant_calls(m):
                args = call.get("arguments") if isinstance(call.get("arguments"), dict) else {}
                if any(_MIXED_INDENT.search(args.get(k) or "") for k in EDIT_TEXT_KEYS if isinstance(args.get(k), str)):
                    return "erroneous_whitespace"
    if "citations" in checks and _has_hallucinated_citation(trajectory):
        return "hallucinated_citation"
    return None


def _has_hallucinated_citation(trajectory: Any) -> bool:
    """Citations are checked on the canonical record: free text (thoughts, the final response) may only name
    files and URLs that the task, an observation, or one of the agent's own tool calls contains."""
    grounded = [trajectory.task]
    free_text = [trajectory.response or ""]
    for step in trajectory.steps:
        free_text.append(step.thought)
        grounded += [o.output for o in step.observations]
        grounded += [s for c in step.calls for s in _strings(c.arguments)]
    corpus = "\n".join(grounded)
    for text in free_text:
        for ref in _URL.findall(text) + _PATH.findall(text):
            if ref.rstrip(".,;:") not in corpus:
                return True
    return False
