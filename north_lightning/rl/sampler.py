"""The sampling side of RL: task pool, rollout worker threads, and the batcher that feeds the spool.

`RolloutService` owns the engine (any `Policy` with `load_weights`), the `WindowedFIFO` (+ ledger) and a
seeded dispatcher over the task pool. Worker threads take a prompt (re-dispatch backlog first), run its G
rollouts side by side through the agent loop (`rl/rollout.py: run_episode`; so `num_workers` x G episodes run at
once, and their turns share the engine's batches; each episode runs under `routing(group, episode)`, so a
`ServerPool` keeps its turns on one sampler server) and complete the group; the batcher thread takes
batches from the queue and writes them to the `RolloutSpool` the datamodule reads.

Two schedules share this code:
- `async` (VLLMSidecar): workers sample continuously; the batcher writes at most `prefetch_batches` batches
  beyond the one being trained (taking a batch early would only make it staler).
- `sync` (SyncRollouts): exactly one batch of prompts is dispatched per optimizer step, after the previous
  step's weights were exported, and the batch is the whole set in input order (on-policy baseline).

Off-policy control (`rl/queue.py`): staleness is bounded in optimizer steps (`max_staleness_steps`); the service
maps each policy version to the optimizer step of its export (`on_export`), dispatches a prompt only while its
group can still be trained within the bound (backpressure, async mode), forms batch i for training step i, and
lets the episodes of a group that expired while running stop at their next engine call (`GroupAborted`).

Failures never lose a prompt: an environment error fails the group with a reason (`failed/env_error:<type>`),
an episode whose infrastructure failed after its retries (`rl/rollout.py: run_episode_retrying`) fails its
group as `failed/infra_error` (no advantage is computed from a broken environment; `rl/infra_error_rate` is the
share of episode runs that hit one),
a dead engine re-queues it (`requeued/engine_died`) and is restarted, stale groups are dropped or resampled by
the queue; `ledger_summary()` accounts for every dispatched prompt.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from north_lightning.rl.env_specs import EnvSpec
from north_lightning.rl.spool import RolloutSpool
from north_lightning.rl.engines.affinity import routing
from north_lightning.rl.engines.inprocess import EngineDied
from north_lightning.rl.queue import WindowedFIFO

log = logging.getLogger(__name__)


def episode_record(episode: Any) -> dict[str, Any]:
    """An `Episode` as plain data for the spool (no class needed to read it back)."""
    return {
        "task_id": episode.task_id, "env": episode.env_name, "reward": float(episode.reward),
        "end_reason": episode.end_reason, "steps": int(episode.steps), "versions": list(episode.policy_versions),
        "segments": [{"token_ids": list(s.token_ids), "logprobs": None if s.logprobs is None else list(s.logprobs),
                      "trainable": bool(s.trainable),
                      "versions": None if s.versions is None else list(s.versions)} for s in episode.segments],
    }


class GroupAborted(RuntimeError):
    """The group's attempt expired (staleness bound) while its episodes ran: they stop at the next engine call."""


class _AbortableEngine:
    """The engine as one episode of one group attempt sees it: each `generate` first checks whether the queue
    aborted that attempt, so an expired group stops sampling at its next turn instead of running to the end."""

    def __init__(self, engine: Any, aborted: Callable[[], bool]) -> None:
        self._engine, self._aborted = engine, aborted

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if self._aborted():
            raise GroupAborted("the group expired (staleness bound) while running")
        return self._engine.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class RolloutService:
    """Engine + queue + workers + batcher (see the module docstring)."""

    def __init__(self, *, engine: Any, tokenizer: Any, envs: list[EnvSpec], tasks: dict[str, list[Any]],
                 spool: RolloutSpool, groups_per_step: int, group_size: int = 8, mode: str = "async",
                 num_workers: int = 2, window: float = 0.1, max_staleness_steps: int = 16, on_stale: str = "drop",
                 prefetch_batches: int = 1, rollout_config: Any = None, seed: int = 0,
                 run_episode: Callable[..., Any] | None = None, restart_engine: Callable[[], Any] | None = None,
                 max_engine_restarts: int = 3, journal: str | Path | None = None, image_prefetch: int = 0,
                 image_prefetch_workers: int = 2, prefetch_image: Callable[[Any], Any] | None = None) -> None:
        if mode not in ("async", "sync"):
            raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (RLOO baseline), got {group_size}")
        from north_lightning.rl import rollout

        self.engine, self.tokenizer, self.envs, self.tasks, self.spool = engine, tokenizer, envs, tasks, spool
        self.groups_per_step, self.group_size, self.mode = groups_per_step, group_size, mode
        self.num_workers, self.prefetch_batches = num_workers, prefetch_batches
        self.rollout_config = rollout_config or rollout.RolloutConfig()
        self.run_episode = run_episode or rollout.run_episode
        self.restart_engine = restart_engine
        # A fault that recurs on every fresh engine (a bad setting, an engine bug hit by every batch) must end the
        # run with its reason instead of restarting forever.
        self.max_engine_restarts = max_engine_restarts
        self.engine_restarts = 0
        self.queue = WindowedFIFO(window=window if mode == "async" else 0.0, max_staleness_steps=max_staleness_steps,
                                  on_stale=on_stale, journal=journal)
        self.rng = random.Random(seed)
        self.seed = seed
        # Names this sampler in every batch it writes, so a reader can tell its batches from ones a killed earlier
        # run left in the spool (see `VLLMSidecar.on_fit_start`).
        self.run_id = uuid.uuid4().hex
        self.trainer_step = 0  # optimizer steps done
        self.version_steps: dict[int, int] = {}  # policy version -> optimizer step of its export
        self.next_batch = 0  # next spool index to write
        self.batch_groups: dict[int, list[int]] = {}  # spool index -> group ids (not yet trained)
        self._dispatch_allowance = 0  # sync mode: prompts that may still be dispatched for the current step
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = time.monotonic()
        self.errors: list[str] = []
        # Warms the images of the next `image_prefetch` tasks in the dispatch order (pull or build in the
        # background while earlier tasks' episodes run); 0 = off, each episode resolves its image itself.
        self.prefetcher: Any = None
        if image_prefetch > 0:
            from north_lightning.envs.registry import ImagePrefetcher
            from north_lightning.envs.session import image_key, task_image

            self.prefetcher = ImagePrefetcher(prefetch_image or task_image, key=image_key, window=image_prefetch,
                                              max_workers=image_prefetch_workers)
        self.episode_runs = 0  # every run of an episode, retries included
        self.infra_errors = 0  # runs that ended in an infrastructure failure

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, trainer_step: int) -> None:
        self.trainer_step = self.next_batch = trainer_step
        self.version_steps.setdefault(int(self.engine.policy_version), trainer_step)
        self.spool.restart_at(trainer_step)  # a resumed run starts a fresh sampler
        if self.mode == "sync":
            self._dispatch_allowance = self.groups_per_step
        with self._cond:
            self._warm_images()
        for i in range(self.num_workers):
            self._spawn(self._worker_loop, f"rollout-worker-{i}")
        self._spawn(self._batcher_loop, "rollout-batcher")

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=self._guard(fn), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as err:  # a bug in the service: record it, the callback raises it on the trainer
                log.exception("rollout service thread crashed")
                self.errors.append(f"{threading.current_thread().name}: {type(err).__name__}: {err}")
                self.spool.fail(self.errors[0])  # readers waiting for a batch stop now, with the reason
                self._stop.set()
                self.queue.close()
        return run

    def stop(self, timeout: float = 120.0) -> None:
        """Stop dispatching, let running episodes end (their containers are removed by the session), join."""
        self._stop.set()
        self.queue.close()
        if self.prefetcher is not None:
            self.prefetcher.close()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("rollout threads still running after %.0f s: %s", timeout, alive)

    # -- trainer side -----------------------------------------------------------------------------------------
    def on_optimizer_step(self, step: int) -> None:
        """Optimizer step `step` (1-based count) finished: its batch (index step-1) is trained."""
        with self._cond:
            for index in [i for i in self.batch_groups if i < step]:
                self.queue.mark_trained(self.batch_groups.pop(index))
            self.trainer_step = step
            if self.mode == "sync":
                self._dispatch_allowance = self.groups_per_step
            self._cond.notify_all()

    def on_export(self, version: int, step: int) -> None:
        """Policy `version` holds the weights after optimizer step `step`; call before the engine serves it."""
        with self._cond:
            self.version_steps[int(version)] = int(step)
            self._cond.notify_all()

    def policy_step(self, version: int) -> int:
        """Optimizer step of a policy version's weights (versions older than this service: its start step)."""
        known = self.version_steps
        if version in known:
            return known[version]
        older = [v for v in known if v <= version]
        return known[max(older)] if older else min(known.values(), default=self.trainer_step)

    def stats(self) -> dict[str, float]:
        depth = self.queue.depth()
        counters = self.queue.counters
        elapsed = max(time.monotonic() - self._started_at, 1e-9)
        return {
            "rl/queue_completed": depth["completed"], "rl/queue_running": depth["running"],
            "rl/queue_backlog": depth["backlog"],
            "rl/sampler_tokens_per_s": getattr(self.engine, "generated_tokens", 0) / elapsed,
            "rl/dropped_stale_total": sum(v for k, v in counters.items() if k.startswith("dropped_stale")),
            "rl/failed_total": sum(v for k, v in counters.items() if k.startswith("failed")),
            "rl/requeued_total": sum(v for k, v in counters.items() if k.startswith("requeued")),
            "rl/engine_restarts": self.engine_restarts,
            **({"rl/images_prefetched": self.prefetcher.stats()["ready"],
                "rl/image_prefetch_failed": self.prefetcher.stats()["failed"]} if self.prefetcher else {}),
            "rl/infra_error_rate": self.infra_errors / max(self.episode_runs, 1),
            "rl/backpressure_waits": counters.get("backpressure_waits", 0),
            "rl/aborted_running_total": counters.get("aborted_running", 0),
            **{f"rl/stale_length/{k}": v for k, v in self.queue.length_report().items()},
        }

    # -- workers ------------------------------------------------------------------------------------------------
    def _next_prompt(self) -> tuple[int, int, dict[str, Any]] | None:
        with self._cond:
            while not self._stop.is_set():
                version = int(self.engine.policy_version)
                step = self.policy_step(version)
                if self.mode == "async" and not self.queue.admits(step, self.next_batch, self.groups_per_step):
                    self._cond.wait(timeout=0.5)  # backpressure: wait for the trainer or an export
                    continue
                redo = self.queue.next_redispatch(step)
                if redo is not None:
                    return redo[0], redo[1], redo[2]
                if self.mode == "sync" and self._dispatch_allowance <= 0:
                    self._cond.wait(timeout=0.5)
                    continue
                if self.mode == "sync":
                    self._dispatch_allowance -= 1
                env, task, seed = self._draw(self.rng)
                prompt = {"env": env.name, "task_id": task.task_id, "seed": seed}
                self._warm_images()
                return self.queue.dispatch(prompt, env.name, step), 1, prompt
        return None

    def _draw(self, rng: random.Random) -> tuple[EnvSpec, Any, int]:
        """The next prompt of the seeded dispatch order: env by weight, task, episode seed."""
        env = rng.choices(self.envs, weights=[e.weight for e in self.envs])[0]
        task = rng.choice(self.tasks[env.name])
        return env, task, rng.randrange(2**31)

    def upcoming_tasks(self, n: int) -> list[Any]:
        """The next `n` tasks the dispatcher will draw (a copy of its RNG replays the draws; nothing consumed)."""
        peek = random.Random()
        peek.setstate(self.rng.getstate())
        return [self._draw(peek)[1] for _ in range(n)]

    def _warm_images(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.warm(self.upcoming_tasks(self.prefetcher.window))

    def _task(self, prompt: dict[str, Any]) -> tuple[EnvSpec, Any]:
        env = next(e for e in self.envs if e.name == prompt["env"])
        task = next(t for t in self.tasks[env.name] if t.task_id == prompt["task_id"])
        return env, task

    def _worker_loop(self) -> None:
        from dataclasses import replace

        from north_lightning.rl.rollout import run_episode_retrying

        while not self._stop.is_set():
            item = self._next_prompt()
            if item is None:
                return
            gid, attempt, prompt = item
            env, task = self._task(prompt)
            config = replace(self.rollout_config, max_steps=env.max_steps) if env.max_steps else self.rollout_config
            def episode(j: int, env: EnvSpec = env, task: Any = task, config: Any = config,
                        prompt: dict[str, Any] = prompt, attempt: int = attempt, gid: int = gid) -> Any:
                engine = _AbortableEngine(self.engine, lambda: self.queue.is_aborted(gid, attempt))
                with routing(group=gid, episode=j):  # a server pool keeps its turns on one server (rl/engines/affinity.py)
                    ep = run_episode_retrying(
                        lambda: self.run_episode(engine, env.harness, self.tokenizer, task, config=config,
                                                 seed=prompt["seed"] + 7919 * j + 104729 * attempt,
                                                 env_name=env.name),
                        task, retries=getattr(config, "infra_retries", 2), env_name=env.name)
                failures = int(ep.timings.get("infra_attempts", 0))
                with self._cond:
                    self.episode_runs += failures + (0 if ep.infra_error else 1)
                    self.infra_errors += failures
                return ep

            try:
                # the group's episodes run side by side: their turns meet in the engine's batches
                # (rl/engines/batching.py) and their sandboxes overlap; results stay in rollout order
                with ThreadPoolExecutor(self.group_size, thread_name_prefix=f"group{gid}") as pool:
                    episodes = list(pool.map(episode, range(self.group_size)))
            except GroupAborted:
                continue  # the queue already ended (dropped) or re-queued (resample) this group, and counted it
            except EngineDied as err:
                log.warning("engine died during group %d (%s); re-queueing and restarting", gid, err)
                self.queue.requeue(gid, "engine_died")
                if self.restart_engine is None:
                    raise
                with self._cond:
                    if not self.engine.is_alive():
                        if self.engine_restarts >= self.max_engine_restarts:
                            raise RuntimeError(f"the engine died again after {self.engine_restarts} restarts "
                                               f"(max_engine_restarts={self.max_engine_restarts}): {err}") from err
                        self.engine_restarts += 1
                        self.restart_engine()
                continue
            except Exception as err:  # environment could not run (image build, Docker): fail with the reason
                log.warning("group %d (%s) failed: %s: %s", gid, prompt["task_id"], type(err).__name__, err)
                self.queue.fail(gid, f"env_error:{type(err).__name__}")
                continue
            if any(ep.infra_error for ep in episodes):  # retries spent: no advantage from a broken environment
                broken = next(ep for ep in episodes if ep.infra_error)
                log.warning("group %d (%s): infrastructure failure after retries: %s", gid, prompt["task_id"],
                            broken.end_reason)
                self.queue.fail(gid, "infra_error")
                continue
            versions = sorted({v for ep in episodes for v in ep.policy_versions}) or [int(self.engine.policy_version)]
            self.queue.complete(gid, [episode_record(ep) for ep in episodes], [self.policy_step(v) for v in versions],
                                attempt=attempt)

    # -- batcher -------------------------------------------------------------------------------------------------
    def _batcher_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                ahead = self.prefetch_batches if self.mode == "async" else 0
                while not self._stop.is_set() and self.next_batch > self.trainer_step + ahead:
                    self._cond.wait(timeout=0.5)
            if self._stop.is_set():
                return
            index = self.next_batch  # trained at optimizer step index + 1, with the weights after `index` steps
            groups = self.queue.take(self.groups_per_step, index, timeout=0.5)
            if groups is None:
                continue
            version = int(self.engine.policy_version)
            batch = {
                "index": index, "policy_version": version, "sampler_run": self.run_id,
                "groups": [{"group_id": g.group_id, "task_id": g.prompt["task_id"], "env": g.env,
                            "staleness": g.staleness(index), "rollouts": g.rollouts} for g in groups],
                "sampler_stats": self.stats(),
            }
            with self._cond:
                self.batch_groups[index] = [g.group_id for g in groups]
                self.next_batch += 1
            self.spool.put(index, batch)

    # -- checkpoint -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue.state_dict(), "rng": self.rng.getstate(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue.load_state_dict(state["queue"])
        self.rng.setstate(state["rng"])
