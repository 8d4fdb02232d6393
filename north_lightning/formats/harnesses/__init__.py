"""Harness formats by name: `get_harness("swe_agent")`. The same object renders SFT data and parses RL
rollout responses, so training data and rollouts cannot disagree on the format."""

from __future__ import annotations

import importlib
from typing import Any

from north_lightning.formats.harnesses.base import Action, FormatError, Harness, ToolCall

# name -> (module, class, constructor kwargs)
HARNESSES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "swe_agent": ("north_lightning.formats.harnesses.swe_agent", "SweAgentHarness", {}),
    "swe_agent_xml": ("north_lightning.formats.harnesses.swe_agent", "SweAgentHarness", {"variant": "xml"}),
    "mini_swe_agent": ("north_lightning.formats.harnesses.mini_swe_agent", "MiniSweAgentHarness", {}),
    "mini_swe_agent_v2": ("north_lightning.formats.harnesses.mini_swe_agent", "MiniSweAgentHarness",
                          {"version": 2}),
    "opencode": ("north_lightning.formats.harnesses.opencode", "OpenCodeHarness", {}),
    "terminus2": ("north_lightning.formats.harnesses.terminus2", "Terminus2Harness", {}),
    "terminus2_xml": ("north_lightning.formats.harnesses.terminus2", "Terminus2Harness", {"parser": "xml"}),
    "chat": ("north_lightning.formats.harnesses.chat", "ChatHarness", {}),
}
AGENT_HARNESSES = ("swe_agent", "swe_agent_xml", "mini_swe_agent", "mini_swe_agent_v2", "opencode", "terminus2",
                   "terminus2_xml")


def get_harness(name: str, **kwargs: Any) -> Harness:
    """A harness instance by registry name; unknown names raise a ValueError listing the known ones."""
    if name not in HARNESSES:
        raise ValueError(f"unknown harness {name!r}; known harnesses: {', '.join(sorted(HARNESSES))}")
    module, cls, defaults = HARNESSES[name]
    return getattr(importlib.import_module(module), cls)(**{**defaults, **kwargs})


__all__ = ["AGENT_HARNESSES", "HARNESSES", "Action", "FormatError", "Harness", "ToolCall", "get_harness"]
