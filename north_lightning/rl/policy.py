"""What the agent loop samples from, and what a sample is.

These two types sit apart from the agent loop (`rl/rollout.py`) so the engines (`rl/engines/`) and scripted
policies can implement them without importing the loop, its sandboxes and its harnesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float] | None
    text: str
    finish_reason: str  # "stop" (end of turn) | "length" (max_tokens) | engine-specific
    # The policy version that produced each generated token (same length as `token_ids`), when the engine knows:
    # with in-flight weight updates one completion can span an export, so a single per-call version would lie.
    versions: list[int] | None = None


@runtime_checkable
class Policy(Protocol):
    """What the agent loop samples from: a vLLM engine (rl/engines/) or a scripted policy in tests."""

    policy_version: int

    def generate(self, prompts: list[list[int]], *, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Completion]: ...
