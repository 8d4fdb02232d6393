"""Plain chat: one user prompt, one assistant answer, no tools. Serves the single-turn sources of the
mixture (competitive programming, reasoning, instruction following) through the same pipeline."""

from __future__ import annotations

from typing import Any

from north_lightning.formats.harnesses.base import Action, FormatError, PlainTextHarness, ToolCall, response_text


class ChatHarness(PlainTextHarness):
    name = "chat"

    def parse(self, response: str | dict[str, Any]) -> Action | FormatError:
        text = response_text(response)
        return Action((), text.strip(), submit=True)

    def canonical(self, action: Action) -> list[ToolCall]:
        return [ToolCall("submit", {})]

    def format_observation(self, call: ToolCall, output: str, exit_code: int | None = None) -> dict[str, Any]:
        return {"role": "user", "content": output}

    def render(self, trajectory: Any, *, seed: int | None = None) -> list[dict[str, Any]]:
        if trajectory.steps or not trajectory.response:
            raise ValueError(f"record {trajectory.id}: the chat harness renders single-turn records (a response, no steps)")
        messages = [{"role": "system", "content": trajectory.system}] if trajectory.system else []
        return messages + [{"role": "user", "content": trajectory.task},
                           {"role": "assistant", "content": trajectory.response}]
