"""The agent loop: a policy drives a sandboxed task through a harness, one assistant turn per step.

The conversation is rendered once with the harness + the tokenizer's chat template; after that the sequence
only grows: each assistant turn appends the token ids *as generated* (with the sampler's logprobs, trainable),
each observation appends the template's tokens for the new turns (not trainable). Nothing generated is ever
re-tokenised, so the trainer scores exactly the tokens the sampler produced.

An episode ends on: submit (`submitted`), the task's step budget (`max_steps`), the context limit
(`context_limit`), an unparseable or invalid response (`format_error:<reason>`, reward 0 without running the
tests), a response cut at max_tokens (`truncated_response`, reward 0), or an environment failure
(`episode_timeout`, `terminal_died`, `sandbox_error` when the agent's own command took the container down).
All but the reward-0 ones are scored by the verifier.

Infrastructure failures are not rewards: an environment that cannot start (image missing or failing to build,
container start), a sandbox that is gone other than by the agent's own command, a grader that cannot set up end
the episode as `infra_error:<what>` (reward 0, `Episode.infra_error`); a Docker host of the fleet that stops
answering mid-episode ends it as `infra_error:host_down`. `run_episode_retrying` runs such an
episode again up to `RolloutConfig.infra_retries` times; what still fails is left out of advantages (the
sampler fails the group, `failed/infra_error`), of pass@k denominators and of the task filter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import docker.errors

from north_lightning.formats.harnesses import get_harness
from north_lightning.formats.harnesses.base import Action, FormatError, Harness, ToolCall
from north_lightning.formats.records import Trajectory
from north_lightning.envs.response import response_message
from north_lightning.envs.sandbox import EpisodeTimeout, HostUnreachable, SandboxError, install_cleanup_hooks
from north_lightning.envs.session import TaskSession
from north_lightning.envs.swe_grader import INFRA_REASONS
from north_lightning.envs.images import ImageBuildError
from north_lightning.envs.tasks import Task, TaskError
from north_lightning.envs.terminal import TerminalDied
from north_lightning.rl.policy import Completion, Policy


class Segment(NamedTuple):
    """A run of tokens of one turn: the prompt / observations (not trainable, no logprobs) or an assistant
    turn (trainable, with the sampler's logprobs when the engine returned them, and the policy version of each
    token: with in-flight weight updates one turn can span an export)."""

    token_ids: list[int]
    logprobs: list[float] | None
    trainable: bool
    versions: list[int] | None = None


@dataclass
class Episode:
    task_id: str
    env_name: str
    reward: float
    end_reason: str
    segments: list[Segment]
    policy_versions: list[int]
    steps: int
    verifier: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def token_ids(self) -> list[int]:
        return [t for seg in self.segments for t in seg.token_ids]

    @property
    def num_tokens(self) -> int:
        return sum(len(seg.token_ids) for seg in self.segments)

    @property
    def infra_error(self) -> bool:
        """The environment failed, not the policy: never a reward to learn from or a sample to count."""
        return self.end_reason.startswith("infra_error:")

    @property
    def format_error(self) -> str | None:
        return self.end_reason.split(":", 1)[1] if self.end_reason.startswith("format_error:") else None


@dataclass
class RolloutConfig:
    max_context: int = 4096
    max_tokens_per_turn: int = 512
    min_turn_tokens: int = 16  # below this much room the episode ends with `context_limit`
    temperature: float = 1.0
    top_p: float = 1.0
    max_steps: int | None = None  # None: the task's own budget
    command_timeout_sec: float = 60.0
    episode_timeout_sec: float | None = None  # None: the task's [agent] timeout_sec
    infra_retries: int = 2  # runs of an episode again after an infrastructure failure (fresh sandbox)


def make_harness(harness: str | Harness, task: Task) -> Harness:
    """A harness instance for `task` (its work dir, and for Terminus-2 the prompt user)."""
    if not isinstance(harness, str):
        return harness
    kwargs: dict[str, Any] = {"workdir": task.workdir}
    if harness == "terminus2":
        kwargs["prompt_user"] = task.user
    return get_harness(harness, **kwargs)


class _Conversation:
    """Messages + the token sequence, grown turn by turn without re-tokenising generated tokens."""

    def __init__(self, tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None):
        self.tokenizer, self.messages, self.tools = tokenizer, list(messages), tools
        prompt = self._render(self.messages, generation_prompt=True)
        self.rendered = prompt
        self.segments: list[Segment] = [Segment(self._encode(prompt), None, False)]
        self.length = len(self.segments[0].token_ids)

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.tools, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def token_ids(self) -> list[int]:
        return [t for seg in self.segments for t in seg.token_ids]

    def add_assistant(self, completion: Completion, message: dict[str, Any], version: int) -> None:
        """`version`: the turn's policy version where the engine gives none per token."""
        versions = completion.versions or [version] * len(completion.token_ids)
        self.segments.append(Segment(list(completion.token_ids), completion.logprobs, True, list(versions)))
        self.length += len(completion.token_ids)
        self.messages.append(message)
        rendered = self._render(self.messages, generation_prompt=False)
        eos = self.tokenizer.eos_token_id
        if not completion.token_ids or completion.token_ids[-1] != eos:
            # stopped without the end-of-turn token (e.g. a stop string): close the turn, not trainable
            self.segments.append(Segment([eos], None, False))
            self.length += 1
        self.rendered = rendered

    def add_observations(self, observations: list[dict[str, Any]], limit: int) -> bool:
        """Append the observation turns (+ the next generation prompt); False, and nothing appended, when
        they would take the sequence past `limit` tokens."""
        rendered = self._render(self.messages + observations, generation_prompt=True)
        if not rendered.startswith(self.rendered):
            raise ValueError("the chat template does not render the conversation incrementally (a prefix of the "
                             "previous rendering changed), so observation tokens cannot be appended")
        ids = self._encode(rendered[len(self.rendered):])
        if self.length + len(ids) > limit:
            return False
        self.messages.extend(observations)
        self.segments.append(Segment(ids, None, False))
        self.length += len(ids)
        self.rendered = rendered
        return True


def run_episode(policy: Policy, harness: str | Harness, tokenizer: Any, task: Task, *,
                config: RolloutConfig | None = None, seed: int | None = None, env_name: str | None = None,
                session_factory: Callable[..., TaskSession] = TaskSession) -> Episode:
    """Run one episode of `task` and return it with its reward. Never raises for what the agent does;
    errors of the machinery do (the environment cannot start: Docker / image errors; the policy's
    `generate` failing), so the caller can retry or re-queue the prompt."""
    config = config or RolloutConfig()
    started = time.monotonic()
    max_steps = config.max_steps or task.max_steps
    overrides: dict[str, Any] = {"command_timeout_sec": config.command_timeout_sec}
    if config.episode_timeout_sec is not None:
        overrides["episode_timeout_sec"] = config.episode_timeout_sec
    versions: list[int] = []
    timings = {"generate_s": 0.0, "env_s": 0.0, "verify_s": 0.0}
    steps, end_reason, verified = 0, "max_steps", True
    awaiting_confirmation = False
    with session_factory(task, **overrides) as session:
        timings["start_s"] = time.monotonic() - started
        harness = make_harness(harness, task)  # after the image: a task's work dir may come from it
        initial = harness.render(Trajectory(id=task.task_id, task=task.instruction, source="rollout"))
        convo = _Conversation(tokenizer, initial, harness.tools())
        while steps < max_steps:
            room = config.max_context - convo.length
            if room < config.min_turn_tokens:
                end_reason = "context_limit"
                break
            t0 = time.monotonic()
            completion = policy.generate([convo.token_ids], max_tokens=min(config.max_tokens_per_turn, room),
                                         temperature=config.temperature, top_p=config.top_p,
                                         seed=None if seed is None else seed * 1000 + steps)[0]
            timings["generate_s"] += time.monotonic() - t0
            # the oldest version in the turn (the stalest token), per token in the segment below
            version = min(completion.versions) if completion.versions else int(policy.policy_version)
            versions.append(version)
            steps += 1
            text = tokenizer.decode(completion.token_ids, skip_special_tokens=False)
            native = harness.tools() is not None
            message = response_message(text, tokenizer, native_tools=native)
            convo.add_assistant(completion, message, version)
            if completion.finish_reason == "length":
                end_reason, verified = "truncated_response", False
                break
            action = harness.parse(message if native else message["content"])
            if isinstance(action, FormatError):
                end_reason, verified = f"format_error:{action.reason}", False
                break
            t0 = time.monotonic()
            try:
                observations, done = _act(session, harness, action, awaiting_confirmation)
            except EpisodeTimeout:
                end_reason = "episode_timeout"
                break
            except HostUnreachable:  # the Docker host stopped answering / was drained (envs/fleet.py)
                end_reason, verified = "infra_error:host_down", False
                break
            except TerminalDied:
                end_reason = "terminal_died"
                break
            except SandboxError as err:
                # A container that dies under the agent's own command was killed by it (`kill -9 -1` as root):
                # the policy's doing, scored (reward 0). Gone otherwise: an infrastructure failure.
                if "while running a command" in str(err):
                    end_reason = "sandbox_error"
                else:
                    end_reason, verified = "infra_error:sandbox_error", False
                break
            finally:
                timings["env_s"] += time.monotonic() - t0
            awaiting_confirmation = bool(action.submit and not done)
            if done:
                end_reason = "submitted"
                break
            if not convo.add_observations(observations, limit=config.max_context - config.min_turn_tokens):
                end_reason = "context_limit"
                break
        verdict = None
        if verified:
            t0 = time.monotonic()
            verdict = session.verify()
            timings["verify_s"] = time.monotonic() - t0
    timings["total_s"] = time.monotonic() - started
    if verdict is not None and end_reason != "sandbox_error" and verdict.reason in (*INFRA_REASONS, "sandbox_gone"):
        end_reason = f"infra_error:{verdict.reason}"
    reward = verdict.reward if verdict is not None and not end_reason.startswith("infra_error:") else 0.0
    return Episode(task_id=task.task_id, env_name=env_name or task.kind, reward=reward, end_reason=end_reason,
                   segments=convo.segments, policy_versions=versions, steps=steps,
                   verifier=verdict.to_dict() if verdict is not None else None, messages=convo.messages,
                   timings=timings)


def _act(session: TaskSession, harness: Harness, action: Action, awaiting_confirmation: bool
         ) -> tuple[list[dict[str, Any]], bool]:
    """Execute an action; returns the observation messages and whether the episode is over."""
    confirm = getattr(harness, "confirmation_message", None)
    if action.submit and confirm is None:
        # SWE-agent's submit call (its diff is recorded), OpenCode's final reply
        for call in action.tool_calls:
            if call.name == "submit":
                session.execute(call)
        return [], True
    if action.submit and awaiting_confirmation:
        return [], True  # Terminus-2: the second consecutive task_complete ends the episode
    outputs: list[tuple[ToolCall, str, int | None]] = []
    submission = getattr(harness, "submission", None)  # mini-SWE-agent: decided by the command's output
    for call in action.tool_calls:
        result = session.execute(call)
        outputs.append((call, result.output, result.exit_code))
        submitted = submission(call, result.output, result.exit_code) if submission is not None else None
        if submitted is not None:
            session.submission = submitted
            return [], True
    observations: list[dict[str, Any]] = []
    if harness.tools() is None and outputs:  # text harnesses answer a reply with one observation
        call, _, code = outputs[-1]
        combined = outputs[0][1]
        for _, output, _ in outputs[1:]:
            combined = merge_screens(combined, output)
        observations.append(harness.format_observation(call, combined, code))
    else:
        observations += [harness.format_observation(c, o, code) for c, o, code in outputs]
    if action.submit:  # Terminus-2's first task_complete: show the screen and ask to confirm
        observations = [confirm(session.terminal.screen())]
    elif action.warning and hasattr(harness, "warn"):  # Terminus-2: "Previous response had warnings"
        observations = [harness.warn(m, action.warning) for m in observations]
    return observations, False


ENV_START_ERRORS = (SandboxError, TaskError, ImageBuildError, docker.errors.DockerException)


def run_episode_retrying(run: Callable[[], Episode], task: Task, *, retries: int, env_name: str | None = None
                         ) -> Episode:
    """`run()` (one episode) until it ends without an infrastructure failure, at most `retries` times again; an
    environment that cannot start becomes an `infra_error:env_start:<type>` episode. The last episode is
    returned with `timings["infra_attempts"]` = the number of infrastructure failures it took."""
    failures = 0
    while True:
        try:
            episode = run()
        except ENV_START_ERRORS as err:
            episode = Episode(task_id=task.task_id, env_name=env_name or task.kind, reward=0.0,
                              end_reason=f"infra_error:env_start:{type(err).__name__}", segments=[],
                              policy_versions=[], steps=0, verifier={"error": str(err)[-2000:]})
        if episode.infra_error:
            failures += 1
        episode.timings["infra_attempts"] = failures
        if not episode.infra_error or failures > retries:
            return episode


@dataclass
class EpisodeJob:
    """One episode to run: a task, its harness, and the sampling seed."""

    task: Task
    harness: str | Harness
    seed: int | None = None
    env_name: str | None = None


def run_episodes(policy: Policy, tokenizer: Any, jobs: list[EpisodeJob], *, config: RolloutConfig | None = None,
                 concurrency: int = 4, on_done: Callable[[Episode], None] | None = None) -> list[Episode]:
    """Run episodes on `concurrency` threads (sandbox time overlaps; the policy serialises its own calls when
    it must); results in job order. Infrastructure failures are retried (`config.infra_retries`); one that
    persists is returned as an `infra_error:...` episode rather than aborting the batch. `on_done(episode)` is
    called from the worker thread as each episode ends (a progress line)."""
    from concurrent.futures import ThreadPoolExecutor

    config = config or RolloutConfig()

    def one(job: EpisodeJob) -> Episode:
        episode = run_episode_retrying(
            lambda: run_episode(policy, job.harness, tokenizer, job.task, config=config, seed=job.seed,
                                env_name=job.env_name),
            job.task, retries=config.infra_retries, env_name=job.env_name)
        if on_done is not None:
            on_done(episode)
        return episode

    install_cleanup_hooks()  # from the caller's thread: on the main thread, signals then remove the workers' boxes
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="rollout") as pool:
        return list(pool.map(one, jobs))


def merge_screens(first: str, second: str) -> str:
    """Join the terminal output of two consecutive commands. Each output starts on the line its keys were
    typed on, i.e. the prompt line the previous output ended with, so that line is kept once."""
    last_line = first.rsplit("\n", 1)[-1]
    if last_line.strip() and second.startswith(last_line.rstrip()):
        return first[: len(first) - len(last_line)] + second
    return first + ("" if not first or first.endswith("\n") else "\n") + second
