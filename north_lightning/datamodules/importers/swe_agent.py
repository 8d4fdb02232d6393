"""SWE-agent trajectories → canonical records.

Follows SWE-agent as written by `sweagent/agent/agents.py` and `sweagent/types.py` of SWE-agent/SWE-agent
v1.1.0 (commit 3ea751c087f32b16e039a2233dd6eefecef325d5):
- a `.traj` file is `{"trajectory": [TrajectoryStep], "history": [HistoryItem], "info": AgentInfo,
  "replay_config": <JSON string>, "environment": ...}` (`get_trajectory_data`). With function calling, each
  assistant `history` item carries `tool_calls` (OpenAI shape, arguments a JSON string) and the next item is
  a `role: tool` observation with `tool_call_ids`; the raw observation of step i is `trajectory[i].observation`.
- older `.traj` files (thought/action parser, SWE-agent 0.x) have no `tool_calls`: `trajectory[i]` holds
  `thought`, `action` (a command line) and `observation`.
- the row form of public SWE-agent trajectory datasets (e.g. nebius/SWE-agent-trajectories):
  `instance_id, model_name, target, trajectory[{role: system|user|ai, text, ...}], exit_status,
  generated_patch`, where an `ai` text is a thought followed by the action in a ``` fence (the last fence is
  the action, as SWE-agent's ThoughtActionParser reads it) and the next `user` text is the observation
  followed by SWE-agent's `(Open file: ...)(Current directory: ...)bash-$` state lines.

Kept: episodes ending with `exit_status == "submitted"` (anything else, including the autosubmission
`submitted (exit_cost)`, is `truncated`); rows with `target: false` are `unresolved`. Tools are SWE-agent's
`bash`, `str_replace_editor` and `submit` (records fixed to the `swe_agent` harness when the editor is used,
harness-agnostic otherwise); SWE-agent 0.x's windowed-editor commands (`open`, `edit`, `search_dir`, ...)
exist in no sandbox of ours and are dropped as `unsupported_tool`. A `submit` that SWE-agent answered with its
review prompt and the agent followed with more actions is not a submission here (our `submit` ends the
episode), so it is left out of the record (`meta.review_submits` counts them).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from north_lightning.datamodules.importers.base import (Drop, ImportOptions, check_resolved, decode_arguments, require,
                                                        task_text, text_of)
from north_lightning.formats.harnesses.base import ToolCall
from north_lightning.formats.records import Observation, Step, Trajectory

NATIVE_TOOLS = ("bash", "str_replace_editor", "submit")
# SWE-agent 0.x tool-bundle commands (defaults.sh, search.sh, edit_linting.sh): shell functions of its own
# image, not programs our sandboxes have.
WINDOWED_COMMANDS = frozenset({"open", "goto", "scroll_up", "scroll_down", "create", "edit", "search_dir",
                               "search_file", "find_file", "filemap", "insert", "undo_edit"})
_FENCE = re.compile(r"```[^\n`]*\n(.*?)\n?```", re.DOTALL)
_STATE_LINES = re.compile(r"\n*\(Open file: [^\n]*\)\n\(Current directory: [^\n]*\)\n?(bash-\$)?\s*$")
_NO_OUTPUT = "Your command ran successfully and did not produce any output."
_TASK_PATTERNS = (re.compile(r"<pr_description>\n?(.*?)\n?</pr_description>", re.DOTALL),
                  re.compile(r"ISSUE:\n(.*?)\n\nINSTRUCTIONS:", re.DOTALL))


def convert(item: Any, where: str, options: ImportOptions) -> Trajectory:
    if isinstance(item, dict) and isinstance(item.get("trajectory"), list) and "instance_id" in item:
        return _from_row(item, where, options)
    if isinstance(item, dict) and ("history" in item or "trajectory" in item):
        return _from_traj(item, where, options)
    raise Drop("malformed", "neither a SWE-agent .traj (history / trajectory / info) nor a trajectory-dataset "
                            "row (instance_id, trajectory, ...)")


# -- .traj ---------------------------------------------------------------------------------------------
def _from_traj(traj: dict[str, Any], where: str, options: ImportOptions) -> Trajectory:
    info = require(traj, "info", dict)
    status = info.get("exit_status")
    if status != "submitted":
        raise Drop("truncated", f"exit_status {status!r} (not 'submitted')")
    history = [m for m in require(traj, "history", list) if isinstance(m, dict) and not m.get("is_demo")]
    steps_raw = traj.get("trajectory") or []
    function_calling = any(m.get("role") == "assistant" and m.get("tool_calls") for m in history)
    steps = _fc_steps(history, steps_raw) if function_calling else _thought_action_steps(steps_raw)
    steps, review_submits = _final_submit_only(steps)
    problem = _replay_problem(traj.get("replay_config"))
    task = problem.get("text") or _task_from_history(history)
    base = problem.get("id") or Path(where.split(":")[0]).stem
    system = next((text_of(m.get("content")) for m in history if m.get("role") == "system"), None)
    return Trajectory(
        id=_record_id(base, steps), task=task, source=options.source, steps=tuple(steps), system=system,
        harness=_harness_for(steps), verified=False,
        meta={"format": "swe-agent.traj", "origin": where, "function_calling": function_calling,
              "exit_status": status, "submission": info.get("submission"), "review_submits": review_submits,
              **check_resolved(None, options, "")},
    )


def _fc_steps(history: list[dict[str, Any]], steps_raw: list[Any]) -> list[Step]:
    raw_obs = [s.get("observation") for s in steps_raw if isinstance(s, dict)]
    assistant = [i for i, m in enumerate(history) if m.get("role") == "assistant"]
    use_raw = len(raw_obs) == len(assistant)
    steps = []
    for k, i in enumerate(assistant):
        msg = history[i]
        calls = msg.get("tool_calls") or []
        if len(calls) != 1:
            raise Drop("malformed", f"history[{i}]: SWE-agent makes exactly one tool call per step, found {len(calls)}")
        fn = require(calls[0], "function", dict, f"history[{i}].tool_calls[0]")
        name = require(fn, "name", str, f"history[{i}].tool_calls[0].function")
        if name not in NATIVE_TOOLS:
            raise Drop("unsupported_tool", f"history[{i}]: tool {name!r} (supported: {', '.join(NATIVE_TOOLS)})")
        call = ToolCall(name, decode_arguments(fn.get("arguments"), f"history[{i}]"))
        nxt = history[i + 1] if i + 1 < len(history) else None
        if use_raw:
            output = raw_obs[k]
        elif nxt is not None and nxt.get("role") in ("tool", "user"):
            output = text_of(nxt.get("content")).removeprefix("OBSERVATION:\n")
        else:
            output = None
        thought = msg.get("thought") if isinstance(msg.get("thought"), str) else text_of(msg.get("content"))
        obs = () if output is None or name == "submit" else (Observation(_clean_output(str(output))),)
        steps.append(Step(thought.strip(), (call,), obs))
    return steps


def _thought_action_steps(steps_raw: list[Any]) -> list[Step]:
    steps = []
    for i, s in enumerate(steps_raw):
        action = require(s, "action", str, f"trajectory[{i}]")
        call = _command_call(action, f"trajectory[{i}]")
        obs = () if call.name == "submit" else (Observation(_clean_output(str(s.get("observation") or ""))),)
        steps.append(Step(str(s.get("thought") or "").strip(), (call,), obs))
    return steps


def _replay_problem(replay: Any) -> dict[str, Any]:
    if isinstance(replay, str):
        try:
            replay = json.loads(replay)
        except json.JSONDecodeError:
            raise Drop("malformed", "replay_config is not JSON") from None
    problem = replay.get("problem_statement") if isinstance(replay, dict) else None
    return problem if isinstance(problem, dict) else {}


def _task_from_history(history: list[dict[str, Any]]) -> str:
    first_user = next((m for m in history if m.get("role") == "user"), None)
    if first_user is None:
        raise Drop("malformed", "no problem statement: no replay_config.problem_statement and no user message")
    return task_text(text_of(first_user.get("content")), _TASK_PATTERNS)


# -- dataset rows ----------------------------------------------------------------------------------------
def _from_row(row: dict[str, Any], where: str, options: ImportOptions) -> Trajectory:
    instance = require(row, "instance_id", str)
    turns = require(row, "trajectory", list)
    status = row.get("exit_status")
    if status is not None and status != "submitted":
        raise Drop("truncated", f"exit_status {status!r} (not 'submitted')")
    target = row.get("target")
    resolved = check_resolved(bool(target) if target is not None else None, options, f"target is {target!r}")
    task = system = None
    steps: list[Step] = []
    for i, turn in enumerate(turns):
        role = require(turn, "role", str, f"trajectory[{i}]")
        text = text_of(turn.get("text"))
        if role == "system":
            system = text
        elif role == "user" and task is None:
            task = task_text(text, _TASK_PATTERNS)
        elif role == "user":
            if steps and not steps[-1].observations and steps[-1].calls[0].name != "submit":
                steps[-1] = Step(steps[-1].thought, steps[-1].calls, (Observation(_clean_output(text)),))
        elif role in ("ai", "assistant"):
            thought, action = _split_thought_action(text, f"trajectory[{i}]")
            steps.append(Step(thought, (_command_call(action, f"trajectory[{i}]"),)))
        else:
            raise Drop("malformed", f"trajectory[{i}]: unknown role {role!r}")
    if task is None:
        raise Drop("malformed", "trajectory has no user turn with the problem statement")
    steps, review_submits = _final_submit_only(steps)
    return Trajectory(
        id=_record_id(instance, steps, str(row.get("model_name"))), task=task, source=options.source,
        steps=tuple(steps), system=system, harness=_harness_for(steps), verified=bool(target),
        meta={"format": "swe-agent.row", "origin": where, "instance_id": instance, "model": row.get("model_name"),
              "exit_status": status, "patch": row.get("generated_patch"), "review_submits": review_submits,
              **resolved},
    )


def _split_thought_action(text: str, where: str) -> tuple[str, str]:
    fences = list(_FENCE.finditer(text))
    if not fences:
        raise Drop("malformed", f"{where}: no ``` action block in the model turn")
    last = fences[-1]
    return text[: last.start()].strip(), last.group(1).strip()


# -- shared ------------------------------------------------------------------------------------------------
def _command_call(action: str, where: str) -> ToolCall:
    action = action.strip()
    head = action.split(maxsplit=1)[0] if action else ""
    if head == "submit":
        return ToolCall("submit", {})
    if head in WINDOWED_COMMANDS:
        raise Drop("unsupported_tool", f"{where}: SWE-agent 0.x command {head!r} (no sandbox of ours has it)")
    if not action:
        raise Drop("malformed", f"{where}: empty action")
    return ToolCall("bash", {"command": action})


def _final_submit_only(steps: list[Step]) -> tuple[list[Step], int]:
    """Keep only a `submit` that ends the episode; earlier ones (SWE-agent's review-on-submit) are dropped."""
    if not steps or not any(s.calls[0].name == "submit" for s in steps):
        raise Drop("truncated", "the episode has no submit action")
    last = max(i for i, s in enumerate(steps) if s.calls[0].name == "submit")
    kept = [s for i, s in enumerate(steps[: last + 1]) if s.calls[0].name != "submit" or i == last]
    return kept, last + 1 - len(kept)


def _harness_for(steps: list[Step]) -> str | None:
    return "swe_agent" if any(c.name not in ("bash", "submit") for s in steps for c in s.calls) else None


def _clean_output(text: str) -> str:
    text = _STATE_LINES.sub("", text)
    return "" if text.strip() == _NO_OUTPUT else text



def _record_id(base: str, steps: list[Step], *extra: str) -> str:
    digest = hashlib.sha1(json.dumps([[(c.name, c.arguments) for c in s.calls] for s in steps], sort_keys=True)
                          .encode() + "".join(extra).encode()).hexdigest()[:10]
    return f"{base}#{digest}"
