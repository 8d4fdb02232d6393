"""Synthetic SFT trajectories from a teacher: episodes run through the ordinary agent loop, turned into records.

A teacher (any `Policy`: an OpenAI-compatible server, the in-process vLLM engine) works tasks through a harness
in the same sandboxes RL uses (`run_episode` / `run_episode_retrying`), so what the grader checks is what the
teacher did. Each episode's sandbox is a `RecordingSession`: it keeps every executed call with its *raw* output
and exit code, so a record stores what the command printed, not one harness's wording of it.

`episode_record` turns a rewarded, submitted episode into a canonical record (`formats/records.py`):
the harness parses each assistant turn back into its action, `harness.canonical` maps it to the shared
vocabulary (`bash{command}`, `submit{}`), and every step carries one call (a turn with several calls becomes
several steps, thought on the first), because mini-SWE-agent renders exactly one call per step. A bash command
after which the harness saw a submission (mini-SWE-agent's `echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`) is
recorded as `submit{}`, and the record ends at the first submit (Terminus-2's confirming second `task_complete`
is what its renderer adds back). A record whose calls are all canonical is harness-agnostic (`harness: null`,
renders in every harness); one that used a native tool (SWE-agent's editor, OpenCode's edit, raw keystrokes)
stays fixed to the harness it was generated in.

Near-duplicates (`dedup_key`): two records of the same task whose normalised action sequences are equal —
tool names and arguments, with every string argument's whitespace runs collapsed to one space and stripped —
are one trajectory; the first (in job order) is kept.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from north_lightning.envs.sandbox import install_cleanup_hooks
from north_lightning.envs.session import StepResult, TaskSession
from north_lightning.envs.tasks import Task
from north_lightning.formats.harnesses.base import Action, FormatError, Harness, ToolCall
from north_lightning.formats.records import CANONICAL_TOOLS, Observation, Step, Trajectory
from north_lightning.rl.policy import Policy
from north_lightning.rl.rollout import Episode, EpisodeJob, RolloutConfig, make_harness, run_episode, \
    run_episode_retrying


@dataclass(frozen=True)
class Execution:
    """One tool call as the sandbox ran it: the call, its raw output and exit code."""

    call: ToolCall
    output: str
    exit_code: int | None


class RecordingSession(TaskSession):
    """A `TaskSession` that appends every executed call to `executions` (cleared when the session is made, so
    after infrastructure retries the list holds the last attempt's calls: the episode that is returned)."""

    def __init__(self, task: Task, *, executions: list[Execution], **kwargs: Any) -> None:
        super().__init__(task, **kwargs)
        executions.clear()
        self.executions = executions

    def execute(self, call: ToolCall) -> StepResult:
        result = super().execute(call)
        self.executions.append(Execution(call, result.output, result.exit_code))
        return result


def run_teacher_episodes(policy: Policy, tokenizer: Any, jobs: list[EpisodeJob], *,
                         config: RolloutConfig | None = None, concurrency: int = 4
                         ) -> list[tuple[Episode, list[Execution]]]:
    """`run_episodes` with recording sandboxes: each job's episode (infrastructure failures retried) and the
    calls its sandbox executed, in job order."""
    config = config or RolloutConfig()

    def one(job: EpisodeJob) -> tuple[Episode, list[Execution]]:
        executions: list[Execution] = []

        def session(task: Task, **overrides: Any) -> RecordingSession:
            return RecordingSession(task, executions=executions, **overrides)

        episode = run_episode_retrying(
            lambda: run_episode(policy, job.harness, tokenizer, job.task, config=config, seed=job.seed,
                                env_name=job.env_name, session_factory=session),
            job.task, retries=config.infra_retries, env_name=job.env_name)
        return episode, list(executions)

    install_cleanup_hooks()
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="synth") as pool:
        return list(pool.map(one, jobs))


class Unconvertible(ValueError):
    """An episode that cannot become a record; `reason` is the report's counter key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _canonical(harness: Harness, call: ToolCall) -> list[ToolCall]:
    to_canonical = getattr(harness, "canonical", None)
    calls = to_canonical(Action((call,))) if to_canonical is not None else [call]
    return [ToolCall(c.name, dict(c.arguments)) for c in calls]  # call ids are the wire format's, not the record's


def episode_steps(episode: Episode, executions: list[Execution], harness: Harness) -> list[Step]:
    """The episode's actions as one-call steps with raw observations, up to and including the first submit."""
    pending = list(executions)
    steps: list[Step] = []
    native = harness.tools() is not None
    for message in episode.messages:
        if message["role"] != "assistant":
            continue
        action = harness.parse(message if native else (message.get("content") or ""))
        if isinstance(action, FormatError):
            raise Unconvertible("unparseable_turn", f"an assistant turn does not parse: {action.reason}")
        thought = action.thought.strip()
        for call in action.tool_calls:
            ran = pending.pop(0) if pending and pending[0].call == call else None
            submission = getattr(harness, "submission", None)
            submitted = (ran is not None and submission is not None and call.name != "submit"
                         and submission(call, ran.output, ran.exit_code) is not None)
            for canon in ([ToolCall("submit", {})] if submitted else _canonical(harness, call)):
                if canon.name == "submit":
                    steps.append(Step(thought, (canon,)))
                    return steps
                obs = (Observation(ran.output, ran.exit_code),) if ran is not None else ()
                steps.append(Step(thought, (canon,), obs))
                thought = ""
        if action.submit:
            steps.append(Step(thought, (ToolCall("submit", {}),)))
            return steps
    raise Unconvertible("no_submit", "the episode has no submitting action")


def episode_record(episode: Episode, executions: list[Execution], *, task: Task, harness_name: str,
                   teacher: str, source: str, sample: int, seed: int | None) -> Trajectory:
    """A rewarded, submitted episode as a verified canonical record; `Unconvertible` for any other."""
    if episode.infra_error:
        raise Unconvertible("infra_error", episode.end_reason)
    if episode.reward < 1.0:
        raise Unconvertible("not_rewarded", f"reward {episode.reward} ({episode.end_reason})")
    if episode.end_reason != "submitted":
        raise Unconvertible("not_submitted", f"rewarded but ended by {episode.end_reason}")
    steps = episode_steps(episode, executions, make_harness(harness_name, task))
    agnostic = all(c.name in CANONICAL_TOOLS for s in steps for c in s.calls)
    verdict = episode.verifier or {}
    meta = {"teacher": teacher, "harness": harness_name, "task_id": task.task_id, "task_kind": task.kind,
            "reward": episode.reward, "tests": dict(verdict.get("tests") or {}),
            "verifier_reason": verdict.get("reason"), "end_reason": episode.end_reason, "turns": episode.steps,
            "sample": sample, "seed": seed, "synthetic": True}
    return Trajectory(id=f"{source}-{task.task_id}-{sample}", task=task.instruction, source=source,
                      steps=tuple(steps), harness=None if agnostic else harness_name, verified=True, meta=meta)


_SPACE = re.compile(r"\s+")


def _normalised(value: Any) -> Any:
    if isinstance(value, str):
        return _SPACE.sub(" ", value).strip()
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def dedup_key(record: Trajectory) -> str:
    """Task + the normalised action sequence (see the module docstring): equal keys are near-duplicates."""
    actions = [[c.name, _normalised(c.arguments)] for s in record.steps for c in s.calls]
    return json.dumps([record.meta.get("task_id"), actions], sort_keys=True)


def dedup(records: list[Trajectory]) -> tuple[list[Trajectory], list[Trajectory]]:
    """(kept, removed): the first record of each `dedup_key`, and the near-duplicates dropped."""
    seen: set[str] = set()
    kept, removed = [], []
    for record in records:
        key = dedup_key(record)
        (removed if key in seen else kept).append(record)
        seen.add(key)
    return kept, removed
