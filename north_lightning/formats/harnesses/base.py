"""The one interface every harness implements, for SFT rendering and RL rollouts alike.

A harness is the format in which an agent talks to its environment (SWE-agent function calls,
mini-SWE-agent bash fences, OpenCode typed tools, Terminus-2 JSON keystrokes). The same module renders a
canonical trajectory into messages for SFT *and* parses a model response back into an action during RL,
so the data the model is trained on and the format it is judged in cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ToolCall:
    """One action: a tool name and its arguments (already decoded from JSON / XML / a fence)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    call_id: str | None = None


@dataclass(frozen=True)
class Action:
    """What a model response asks the environment to do.

    `tool_calls` may be empty only when `submit` is True (the agent declares it is done).
    `thought` is the free text around the call (kept for logging, never executed).
    `warning` is feedback on a reply that parsed but not cleanly (Terminus-2 shows it with the next output).
    """

    tool_calls: tuple[ToolCall, ...]
    thought: str = ""
    submit: bool = False
    warning: str = ""


@dataclass(frozen=True)
class FormatError:
    """A response that is not a valid action. `reason` is a stable counter key
    (e.g. "no_action", "multiple_actions", "bad_json", "unknown_tool", "missing_argument");
    `message` is the feedback text the harness shows the model, where it shows one."""

    reason: str
    message: str


@runtime_checkable
class Harness(Protocol):
    """Render canonical trajectories into messages; parse responses into actions.

    Optional: `submission(call, output, exit_code) -> str | None`, for harnesses whose episode ends on what a
    command *printed* rather than on a submit call (mini-SWE-agent); the agent loop asks it after each call."""

    name: str

    def render(self, trajectory: Any, *, seed: int | None = None) -> list[dict[str, Any]]:
        """Messages (`role`, `content`, optional `tool_calls` / `tool_call_id`) in this harness's format.
        `seed` picks a template variation; None means the canonical template."""
        ...

    def tools(self) -> list[dict[str, Any]] | None:
        """OpenAI-style tool schemas for native function calling, or None for plain-text harnesses."""
        ...

    def parse(self, response: str | dict[str, Any]) -> Action | FormatError:
        """A model response (text, or a message dict with `tool_calls`) → an action or a format error."""
        ...

    def format_observation(self, call: ToolCall, output: str, exit_code: int | None = None) -> dict[str, Any]:
        """The message that carries a tool's output back to the model, in this harness's wording."""
        ...


def response_text(response: str | dict[str, Any]) -> str:
    """The text of a model response given as text or as a message dict (its `content`, possibly None)."""
    return (response.get("content") or "") if isinstance(response, dict) else response


def check_record_harness(trajectory: Any, *names: str) -> None:
    """A record written for one harness (its `harness` field set) renders only through that harness (`names`:
    the registry names of the harness rendering it)."""
    if trajectory.harness not in (None, *names):
        raise ValueError(f"record {trajectory.id} is fixed to harness {trajectory.harness!r}, not {'/'.join(names)}")


class PlainTextHarness:
    """Base of the harnesses whose actions are written in the reply text (mini-SWE-agent fences, Terminus-2
    JSON, plain chat): they offer the model no native tool schemas."""

    name: str

    def tools(self) -> list[dict[str, Any]] | None:
        return None

    def tools_for(self, seed: int | None) -> list[dict[str, Any]] | None:
        return None
