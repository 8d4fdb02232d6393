"""Harbor / Terminal-Bench trial directories of the Terminus-2 agent → canonical records.

Follows what Harbor writes per trial (harbor-framework/harbor, formerly laude-institute/harbor, read in the
vendored copy multimodal-art-projection/TACO@f3bb108fb472f22a8a8dbf90be0e5499c19d4360): `<trial>/result.json`
(a `TrialResult`: `trial_name`, `task_name`, `config`, `verifier_result: {"rewards": {"reward": r}}`,
`exception_info`) and `<trial>/agent/trajectory.json` in Harbor's ATIF format (`schema_version`,
`agent: {name, version, model_name}`, `steps: [{step_id, source: system|user|agent, message,
reasoning_content?, tool_calls?: [{tool_call_id, function_name, arguments}], observation?: {results:
[{content}]}}]`). Terminus-2 records each reply as `bash_command{keystrokes, duration}` calls plus
`mark_task_complete{}`, or, with `trajectory_config.raw_content`, as the raw reply text in `message`, which is
parsed here with our Terminus-2 parser (json or xml, from the agent's `parser_name`).

Terminus-2 asks to confirm `task_complete`: a completion followed by another completing reply is one
submission (the confirmation is not a step of the record; the harness renders it again); a completion the
agent did not confirm is not one. Records are fixed to the Terminus-2 harness (json or xml) and keep every
command as the `keystrokes{keystrokes, duration}` call it was, durations included (a canonical `bash{command}`
would render with the harness's default wait, and a long build would be cut short). Harbor's
terminal capture of a reply is cut at the echoed commands into each command's output (the harness renders
prompt and command itself); a capture it cannot cut stays whole on the reply's last command.

Kept: trials with a verifier reward of 1 or more; a lower reward is `unresolved`; a trial with an exception
(agent timeout, environment error) or no verifier result is `truncated`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from north_lightning.datamodules.importers.base import Drop, ImportOptions, check_resolved, require, text_of
from north_lightning.formats.harnesses import get_harness
from north_lightning.formats.harnesses.base import Action, ToolCall
from north_lightning.formats.records import Observation, Step, Trajectory

TRAJECTORY = Path("agent") / "trajectory.json"


def iter_items(src: str | Path) -> Iterator[tuple[Any, str]]:
    """Every trial directory under `src` (a trial, a job of trials, or a tree of jobs): a directory holding
    `result.json` next to an `agent/` directory."""
    root = Path(src)
    if not root.is_dir():
        raise ValueError(f"{root}: a Harbor import reads trial directories (result.json + agent/), not a file")
    trials = sorted(p.parent for p in root.rglob("result.json") if (p.parent / "agent").is_dir())
    if not trials:
        raise ValueError(f"{root}: no Harbor trial directory (result.json next to agent/) found")
    for trial in trials:
        yield trial, str(trial)


def convert(item: Any, where: str, options: ImportOptions) -> Trajectory:
    trial = Path(item)
    result = _load(trial / "result.json")
    if result.get("exception_info"):
        exc = result["exception_info"]
        kind = exc.get("exception_type") if isinstance(exc, dict) else exc
        raise Drop("truncated", f"the trial raised {kind}")
    reward = _reward(result.get("verifier_result"))
    if reward is None:
        raise Drop("truncated", "no verifier reward in result.json")
    resolved = check_resolved(reward >= 1.0, options, f"reward {reward}")
    atif = _load(trial / TRAJECTORY)
    steps_raw = require(atif, "steps", list, str(TRAJECTORY))
    parser = _parser_name(result, trial)
    harness = get_harness("terminus2", parser=parser)
    task = None
    replies: list[tuple[str, list[ToolCall], bool, str]] = []  # (thought, calls, complete, observation)
    parse_errors = 0
    for i, step in enumerate(steps_raw):
        source = require(step, "source", str, f"steps[{i}]")
        if source == "user" and task is None:
            task = _task_text(text_of(step.get("message")))
        elif source == "agent":
            reply = _reply(step, harness, f"steps[{i}]")
            if reply is None:
                parse_errors += 1
                continue
            replies.append(reply)
    if task is None:
        raise Drop("malformed", f"{TRAJECTORY}: no user step with the task")
    steps = _steps(replies)
    if not steps or steps[-1].calls[-1].name != "submit":
        raise Drop("truncated", "the agent never confirmed task_complete")
    return Trajectory(
        id=str(result.get("trial_name") or trial.name), task=task, source=options.source, steps=tuple(steps),
        harness=harness.name, verified=reward >= 1.0,
        meta={"format": "harbor-terminus2", "origin": where, "task_name": result.get("task_name"),
              "reward": reward, "parser": parser, "parse_errors": parse_errors,
              "agent": (atif.get("agent") or {}).get("name"), **resolved},
    )


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise Drop("malformed", f"{path.name} missing in the trial directory")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Drop("malformed", f"{path}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise Drop("malformed", f"{path}: not a JSON object")
    return value


def _reward(verifier: Any) -> float | None:
    if not isinstance(verifier, dict):
        return None
    rewards = verifier.get("rewards")
    if isinstance(rewards, dict):
        value = rewards.get("reward", next(iter(rewards.values()), None))
    else:
        value = verifier.get("reward")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _parser_name(result: dict[str, Any], trial: Path) -> str:
    config = result.get("config")
    if not isinstance(config, dict) and (trial / "config.json").is_file():
        config = _load(trial / "config.json")
    agent = (config or {}).get("agent") if isinstance(config, dict) else None
    kwargs = (agent or {}).get("kwargs") if isinstance(agent, dict) else None
    return "xml" if isinstance(kwargs, dict) and kwargs.get("parser_name") == "xml" else "json"


def _reply(step: dict[str, Any], harness: Any, where: str) -> tuple[str, list[ToolCall], bool, str] | None:
    """One agent reply as (thought, calls, task_complete, terminal output); None for a reply Terminus-2
    could not parse (it answered with the error; no command ran)."""
    results = (step.get("observation") or {}).get("results") or []
    output = _screen_of("".join(text_of(r.get("content")) for r in results if isinstance(r, dict)))
    tool_calls = step.get("tool_calls")
    if tool_calls is None:  # raw_content trajectories: the reply text itself
        action = harness.parse(text_of(step.get("message")))
        if not isinstance(action, Action):
            return None
        calls = [c for c in action.tool_calls if c.arguments.get("keystrokes")]
        return action.thought, calls, action.submit, output
    calls, complete = [], False
    for j, call in enumerate(tool_calls):
        name = require(call, "function_name", str, f"{where}.tool_calls[{j}]")
        args = call.get("arguments") or {}
        if name == "mark_task_complete":
            complete = True
        elif name == "bash_command":
            keys = require(args, "keystrokes", str, f"{where}.tool_calls[{j}].arguments")
            duration = args.get("duration", 1.0)
            calls.append(ToolCall("keystrokes", {"keystrokes": keys, "duration": float(duration)}))
        else:
            raise Drop("unsupported_tool", f"{where}: Terminus-2 tool {name!r}")
    message = text_of(step.get("message")).strip()
    found = _ANALYSIS_PLAN.match(message)
    if found:  # Terminus-2 logs a parsed reply as "Analysis: ...\nPlan: ..."
        message = "\n".join(t for t in (found.group(1).strip(), found.group(2).strip()) if t)
    thought = "\n".join(t for t in (text_of(step.get("reasoning_content")).strip(), message) if t)
    return thought, calls, complete, output


def _steps(replies: list[tuple[str, list[ToolCall], bool, str]]) -> list[Step]:
    steps: list[Step] = []
    for k, (thought, calls, complete, output) in enumerate(replies):
        confirmed = complete and k + 1 < len(replies) and replies[k + 1][2]
        if k > 0 and replies[k - 1][2] and complete and steps and steps[-1].calls[-1].name == "submit":
            break  # the confirmation of the submission just recorded
        canon = list(calls)
        obs = tuple(Observation(o) for o in _split_screen(output, canon))
        if confirmed:
            steps.append(Step(thought, (*canon, ToolCall("submit", {})), obs))
        elif canon or not complete:
            steps.append(Step(thought, tuple(canon) or (ToolCall("keystrokes", {"keystrokes": "", "duration": 1.0}),),
                              obs or (Observation(output),)))
    return steps


_ANALYSIS_PLAN = re.compile(r"Analysis:(.*?)\nPlan:(.*)", re.DOTALL)
_OBSERVATION_WRAPPERS = (re.compile(r"^Previous response had warnings:\nWARNINGS:.*?\n\n"
                                    r"(?=New Terminal Output:|Current terminal state:)", re.DOTALL),
                         re.compile(r"^(New Terminal Output:\n\n|Current terminal state:\n)"),
                         re.compile(r"\n*Are you sure you want to mark the task as complete\?.*$", re.DOTALL))


def _screen_of(observation: str) -> str:
    """The terminal capture inside what Terminus-2 sent back (its warnings, headers and the completion
    question removed: the harness writes its own)."""
    for wrapper in _OBSERVATION_WRAPPERS:
        observation = wrapper.sub("", observation, count=1)
    return observation


def _split_screen(screen: str, calls: list[ToolCall]) -> list[str]:
    """Harbor captures one terminal screen per reply: prompt, echoed command, output, for each command, then
    the prompt. The harness renders that screen from each command's own output, so cut the capture at the
    echoed commands; when a command's echo is not found (control keys, a wrapped line) the rest of the
    capture goes to the last command."""
    if not calls:
        return []
    outputs = [""] * len(calls)
    starts: list[tuple[int, int]] = []  # (start of the echo line, start of the output) per command
    pos = 0
    for call in calls:
        keys = call.arguments["keystrokes"]
        if not keys.endswith("\n") or not keys.strip():
            break
        echo = screen.find(keys, pos)
        if echo < 0:
            break
        line = screen.rfind("\n", 0, echo) + 1
        starts.append((line, echo + len(keys)))
        pos = starts[-1][1]
    if len(starts) < len(calls):  # not every command echoed: keep the capture whole on the last command
        outputs[-1] = screen
        return outputs
    final_prompt = screen.rfind("\n") + 1 if not screen.endswith("\n") else len(screen)
    ends = [nxt[0] for nxt in starts[1:]] + [max(final_prompt, starts[-1][1])]
    return [screen[start:end] for (_, start), end in zip(starts, ends)]


def _task_text(text: str) -> str:
    head, sep, rest = text.partition("Task Description:\n")
    if not sep:
        return text.strip()
    return rest.split("\n\nCurrent terminal state:", 1)[0].strip()
