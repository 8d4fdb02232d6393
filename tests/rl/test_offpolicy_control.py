"""Off-policy control of the rollout service with injected delays (rl/sampler.py + rl/queue.py, real threads, real
spool): staleness is bounded in optimizer steps at dispatch (backpressure) and at consumption, a group that expires
while running is aborted at its next engine call and counted, what the bound removed is reported against what was
kept, and every dispatched prompt still ends exactly once in the ledger.

The engine is a named stand-in (`DelayEngine`): the delays are the fault under test (a heavy-tailed task that
outlives the bound), which a real engine on 2 shared cores would not produce on cue."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from north_lightning.rl.rollout import Episode, Segment
from north_lightning.rl.env_specs import EnvSpec
from north_lightning.rl.sampler import RolloutService
from north_lightning.rl.spool import RolloutSpool

SLOW, TURNS, SLOW_TURN_S, FAST_TURN_S = "slow", 8, 0.25, 0.01


class DelayEngine:
    """Stand-in engine: each `generate` takes the task's turn time and returns one token; counts calls per task."""

    def __init__(self) -> None:
        self.policy_version, self.generated_tokens = 0, 0
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def generate(self, prompts, *, max_tokens, task_id: str = "", **_):
        time.sleep(SLOW_TURN_S if task_id == SLOW else FAST_TURN_S)
        with self.lock:
            self.calls[task_id] = self.calls.get(task_id, 0) + 1
            self.generated_tokens += 1
        return [[7]]

    def is_alive(self) -> bool:
        return True


class Task:
    def __init__(self, task_id: str) -> None:
        self.task_id, self.max_steps = task_id, None


def run_episode(policy, harness, tokenizer, task, *, config=None, seed=None, env_name=None):
    """TURNS engine calls through whatever the service hands over (the abortable view of the engine)."""
    versions = []
    for _ in range(TURNS):
        versions.append(int(policy.policy_version))
        policy.generate([[1]], max_tokens=1, task_id=task.task_id)
    return Episode(task_id=task.task_id, env_name=env_name, reward=float(seed % 2), end_reason="done",
                   segments=[Segment([1, 2], None, False), Segment([7] * TURNS, [-1.0] * TURNS, True)],
                   policy_versions=versions, steps=TURNS)


def _run(tmp_path: Path, on_stale: str, steps: int = 8, bound: int = 1, export_every: int = 1) -> tuple:
    engine = DelayEngine()
    tasks = {"toy": [Task(SLOW)] + [Task(f"fast{i}") for i in range(5)]}
    service = RolloutService(engine=engine, tokenizer=None, envs=[EnvSpec("toy", "unused", "chat")], tasks=tasks,
                             spool=RolloutSpool(tmp_path / "spool"), groups_per_step=2, group_size=2, num_workers=6,
                             window=0.5, max_staleness_steps=bound, on_stale=on_stale, prefetch_batches=1, seed=3,
                             run_episode=run_episode)
    service.start(0)
    trained_staleness = []
    try:
        for index in range(steps):
            batch = service.spool.get(index, timeout=60)
            for group in batch["groups"]:
                # recomputed from the rollouts: the oldest weights (exported at step == version here) vs this step
                oldest = min(min(r["versions"]) for r in group["rollouts"])
                trained_staleness.append(index - oldest * export_every)
                assert group["staleness"] == trained_staleness[-1]
            time.sleep(0.05)  # the optimizer step
            if (index + 1) % export_every == 0:
                version = engine.policy_version + 1
                service.on_export(version, index + 1)
                engine.policy_version = version
            service.on_optimizer_step(index + 1)
    finally:
        service.stop(timeout=30)
        service.queue.cancel_open("run_end")
    return service, engine, trained_staleness


@pytest.mark.parametrize("on_stale", ["drop", "resample"])
def test_bound_holds_expired_groups_are_aborted_and_every_prompt_ends_once(tmp_path: Path, on_stale: str) -> None:
    service, engine, staleness = _run(tmp_path, on_stale)
    assert staleness and max(staleness) <= 1  # never trained beyond the bound
    counters = service.queue.counters
    # the slow task (8 turns x 0.25 s) outlives a 1-step bound: expired while running, aborted at its next call
    assert counters["aborted_running"] >= 1
    assert engine.calls.get(SLOW, 0) < TURNS * counters["dispatched"]  # its episodes stopped early
    assert counters["backpressure_waits"] > 0  # 6 workers, 2 groups a step, bound 1: dispatch waited
    report = service.queue.length_report()
    assert report["removed_n"] >= 1 and report["kept_n"] >= 14
    if on_stale == "drop":  # the slow task is what the bound removed: longer than what was kept (the bias, reported)
        assert report["removed_mean"] > report["kept_mean"]
    stats = service.stats()
    assert stats["rl/stale_length/removed_n"] == report["removed_n"]

    ledger = service.queue.ledger()
    assert set(ledger) == set(range(counters["dispatched"]))  # ids are dense: every dispatch has an entry
    assert all(e.state in ("trained", "dropped_stale", "failed") for e in ledger.values())
    summary = service.queue.ledger_summary()
    assert sum(summary.values()) == len(ledger)
    if on_stale == "drop":
        assert summary.get("dropped_stale/staleness>1", 0) >= 1
    else:
        assert counters["resampled_stale"] >= 1 and counters["redispatched"] >= 1
    trained = [gid for gid, e in ledger.items() if e.state == "trained"]
    assert len(trained) == len(set(trained)) >= 8 * 2 - 2  # the last batch may be taken but not trained


def test_token_mask_by_logprob_difference_is_off_by_default_and_counted() -> None:
    import torch

    from north_lightning.rl.losses import cispo_loss

    logp = torch.tensor([[-1.0, -2.0, -3.0, -0.5]], requires_grad=True)
    sampler = torch.tensor([[-1.0, -2.5, -0.5, -0.5]])
    adv, mask = torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool)
    full, m_full = cispo_loss(logp, sampler, adv, mask, 4)
    masked, m = cispo_loss(logp, sampler, adv, mask, 4, max_logprob_diff=1.0)
    assert "masked_frac" not in m_full and float(m["masked_frac"]) == 0.25  # |-3 - -0.5| = 2.5 > 1
    masked.backward()
    assert logp.grad[0, 2] == 0 and logp.grad[0, 0] != 0
    assert float(full) != float(masked)
