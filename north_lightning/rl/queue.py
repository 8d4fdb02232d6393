"""Windowed FIFO between the rollout workers and the trainer, with the ledger of every dispatched prompt.

A *group* is all G rollouts of one prompt (the RLOO baseline needs the whole group). Groups enter the queue
in **dispatch order** when their prompt is handed to a worker, and are marked complete when the last rollout
finishes. The trainer takes batches of N groups from the head:

- strict FIFO (`window=0`) waits for the oldest groups, so one straggler stalls the whole trainer;
- completion order (`window=1`, no limit on jumps) takes whatever finished first, which is fast but skews the task mix towards
  easy/short tasks (the slow ones are always trained late, i.e. more off-policy, or never);
- windowed FIFO (e.g. `window=0.1`): a batch is the first N *completed* groups in dispatch order, where at
  most `floor(window * N)` still-running groups may be jumped over. So at most a `window` fraction of a batch
  is filled out of input order (in completion order, to drain around stragglers); the rest is exactly the
  input order. A jumped group stays at the head and is taken first once it completes.

Staleness is counted in optimizer steps: a group's *policy step* is the optimizer step whose exported weights
produced its oldest token (the caller maps policy versions to export steps), and a batch is formed for the step
that will train it (`take(..., train_step=i)` for global batch i, trained with the weights after i steps), so
staleness = train_step - policy step is exact at consumption, however far ahead the batch is prefetched. It is
bounded by `max_staleness_steps`, at two places:
- at dispatch (backpressure, `admits`): a new group is dispatched only while it can still be consumed within the
  bound, i.e. the first batch it can join, given the groups already queued ahead of it, is at most `policy step +
  max_staleness_steps`; otherwise the dispatcher waits for the trainer (or an export) instead of sampling a group
  that would only expire;
- at consumption: a group over the bound for the batch being formed is dropped and counted (`on_stale="drop"`) or
  re-dispatched with fresh weights (`on_stale="resample"`). A running group over the bound can never become
  usable, so it is expired at once instead of blocking the head, and its attempt is marked aborted
  (`is_aborted`), which the sampler's episodes check before each engine call.
What the bound removed is reported against what was kept (`length_report`: group durations, dispatch to
completion, or to expiry for a running group, a lower bound), because dropping by staleness removes the slowest,
longest groups first and biases the data against long tasks.

The ledger gives each dispatched prompt one entry that ends in exactly one terminal state: `trained`,
`dropped_stale` or `failed` (with a reason). `state_dict()` stores the ledger without the rollouts; on
`load_state_dict()` every group that was not yet trained is put back in the dispatch backlog (`resume`
counts them), so a resumed run loses no prompt and trains none twice. With a `journal` file every dispatch is
also appended there before it runs, so prompts dispatched after the last checkpoint (a SIGKILL) are found and
re-dispatched on resume as well (`requeued/after_checkpoint`).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ledger states. Terminal: trained, dropped_stale, failed.
BACKLOG, RUNNING, COMPLETED, TAKEN, TRAINED, DROPPED_STALE, FAILED = (
    "backlog", "running", "completed", "taken", "trained", "dropped_stale", "failed",
)
TERMINAL = (TRAINED, DROPPED_STALE, FAILED)


@dataclass
class Group:
    """One prompt's rollouts. `prompt` is whatever the dispatcher needs to run it again (a task id, a dict)."""

    group_id: int
    prompt: Any
    env: str
    dispatch_step: int  # policy step (optimizer step of the engine's weights) at dispatch
    dispatched_at: float
    rollouts: list[Any] = field(default_factory=list)
    min_step: int | None = None  # policy step of the oldest weights that produced a token
    completed_at: float | None = None
    attempts: int = 1

    def staleness(self, train_step: int) -> int:
        return train_step - (self.dispatch_step if self.min_step is None else self.min_step)

    def duration(self, now: float) -> float:
        return (self.completed_at if self.completed_at is not None else now) - self.dispatched_at


@dataclass
class LedgerEntry:
    prompt: Any
    env: str
    state: str
    reason: str = ""
    attempts: int = 1


class WindowedFIFO:
    """Thread-safe windowed FIFO of groups plus the ledger (see the module docstring)."""

    def __init__(self, *, window: float = 0.1, max_staleness_steps: int = 16, on_stale: str = "drop",
                 clock: Any = time.monotonic, journal: str | Path | None = None) -> None:
        if not 0.0 <= window <= 1.0:
            raise ValueError(f"queue window must be in [0, 1], got {window}")
        if max_staleness_steps < 0:
            raise ValueError(f"max_staleness_steps must be >= 0, got {max_staleness_steps}")
        if on_stale not in ("drop", "resample"):
            raise ValueError(f"on_stale must be 'drop' or 'resample', got {on_stale!r}")
        self.window, self.max_staleness_steps, self.on_stale = window, max_staleness_steps, on_stale
        self._aborted: set[tuple[int, int]] = set()  # (group_id, attempt) expired while running
        self._durations: dict[str, list[float]] = {"kept": [], "removed": []}
        self._clock = clock
        self._cond = threading.Condition()
        self._slots: dict[int, Group] = {}  # not yet taken, insertion (= dispatch) order
        self._ledger: dict[int, LedgerEntry] = {}
        self._backlog: list[tuple[int, Any, str]] = []  # (group_id, prompt, env) to (re-)dispatch
        self._next_id = 0
        self._closed = False
        self.counters: Counter[str] = Counter()
        self.journal = Path(journal) if journal is not None else None

    # -- producer side ------------------------------------------------------------------------------
    def admits(self, policy_step: int, next_batch: int, batch_size: int) -> bool:
        """Backpressure: may the next group (the backlog's head, else a new prompt) sampled now by the weights of
        `policy_step` still be trained within the bound? Its first possible batch is `next_batch` (the next one to
        form) plus one per `batch_size` groups queued ahead of it (running or completed, not taken; the rest of the
        backlog comes after it)."""
        with self._cond:
            ahead = len(self._slots)
            ok = next_batch + ahead // max(batch_size, 1) <= policy_step + self.max_staleness_steps
            if not ok:
                self.counters["backpressure_waits"] += 1
            return ok

    def is_aborted(self, group_id: int, attempt: int) -> bool:
        """True once this attempt of the group expired while running: its episodes should stop."""
        with self._cond:
            return (group_id, attempt) in self._aborted

    def dispatch(self, prompt: Any, env: str, policy_step: int) -> int:
        """Register a new group about to be rolled out; returns its id (dispatch order)."""
        with self._cond:
            gid = self._next_id
            self._next_id += 1
            self._ledger[gid] = LedgerEntry(prompt, env, RUNNING)
            self._slots[gid] = Group(gid, prompt, env, policy_step, self._clock())
            self.counters["dispatched"] += 1
            if self.journal is not None:  # write-ahead: a dispatch survives a SIGKILL before the next checkpoint
                with self.journal.open("a") as f:
                    f.write(json.dumps({"group_id": gid, "prompt": prompt, "env": env}) + "\n")
                    f.flush()
            return gid

    def next_redispatch(self, policy_step: int) -> tuple[int, int, Any, str] | None:
        """Pop one group of the backlog (resampled stale groups, groups of a dead engine, groups of a resumed
        run) and put it back in flight under its original id: (group_id, attempt, prompt, env); None when the backlog
        is empty."""
        with self._cond:
            if not self._backlog:
                return None
            gid, prompt, env = self._backlog.pop(0)
            entry = self._ledger[gid]
            entry.state, entry.attempts = RUNNING, entry.attempts + 1
            self._slots[gid] = Group(gid, prompt, env, policy_step, self._clock(), attempts=entry.attempts)
            self.counters["redispatched"] += 1
            return gid, entry.attempts, prompt, env

    def complete(self, group_id: int, rollouts: list[Any], steps_seen: list[int] | None = None,
                 attempt: int | None = None) -> None:
        """All rollouts of a group are done. `steps_seen`: the policy step of every weights that produced a token;
        `attempt`: the attempt the worker ran (a result of an attempt that was since requeued is discarded)."""
        with self._cond:
            group = self._slots.get(group_id)
            if (group is None or self._ledger[group_id].state != RUNNING
                    or (attempt is not None and attempt != group.attempts)):
                # Expired while running (stale or requeued): its result is discarded, already counted.
                self.counters["late_completion_discarded"] += 1
                return
            group.rollouts = list(rollouts)
            group.min_step = min(steps_seen) if steps_seen else group.dispatch_step
            group.completed_at = self._clock()
            self._ledger[group_id].state = COMPLETED
            self.counters["completed"] += 1
            self._cond.notify_all()

    def fail(self, group_id: int, reason: str) -> None:
        """A group that cannot be trained on (environment error, ...): terminal, counted by reason."""
        with self._cond:
            self._slots.pop(group_id, None)
            self._finish(group_id, FAILED, reason)
            self._cond.notify_all()

    def requeue(self, group_id: int, reason: str) -> None:
        """Put a running group back in the backlog (e.g. its engine died); counted under `requeued/<reason>`."""
        with self._cond:
            self._slots.pop(group_id, None)
            entry = self._ledger[group_id]
            if entry.state in TERMINAL:
                return
            entry.state = BACKLOG
            self._backlog.append((group_id, entry.prompt, entry.env))
            self.counters[f"requeued/{reason}"] += 1
            self._cond.notify_all()

    # -- consumer side ------------------------------------------------------------------------------
    def take(self, batch_size: int, train_step: int, timeout: float | None = None) -> list[Group] | None:
        """Block until a batch of `batch_size` groups, to be trained at optimizer step `train_step` (global batch
        index), can be formed under the window rule and the staleness bound; None on timeout or when the queue is
        closed. The groups' ledger state becomes `taken` (see `mark_trained`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._expire_stale(train_step)
                batch = self._try_form(batch_size)
                if batch is not None:
                    now = self._clock()
                    for g in batch:
                        del self._slots[g.group_id]
                        self._ledger[g.group_id].state = TAKEN
                        self._record("kept", g.duration(now))
                    self.counters["taken"] += len(batch)
                    return batch
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(timeout=remaining if remaining is not None else 1.0)

    def _try_form(self, batch_size: int) -> list[Group] | None:
        if self.window >= 1.0:  # pure completion order: the first groups to finish, wherever they are
            done = sorted((g for g in self._slots.values() if g.completed_at is not None), key=lambda g: g.completed_at)
            return done[:batch_size] if len(done) >= batch_size else None
        max_jumps = math.floor(self.window * batch_size + 1e-9)
        batch: list[Group] = []
        jumps = 0
        for group in self._slots.values():
            if group.completed_at is not None:
                batch.append(group)
                if len(batch) == batch_size:
                    return batch
            else:
                jumps += 1
                if jumps > max_jumps:
                    return None
        return None

    def _expire_stale(self, train_step: int) -> None:
        now = self._clock()
        for gid in [g for g, grp in self._slots.items() if grp.staleness(train_step) > self.max_staleness_steps]:
            group = self._slots.pop(gid)
            self._record("removed", group.duration(now))
            if group.completed_at is None:
                self.counters["stale_running"] += 1
                self.counters["aborted_running"] += 1
                self._aborted.add((gid, group.attempts))
            else:
                self.counters["stale_completed"] += 1
            if self.on_stale == "drop":
                self._finish(gid, DROPPED_STALE, f"staleness>{self.max_staleness_steps}")
            else:
                self._ledger[gid].state = BACKLOG
                self._backlog.append((gid, group.prompt, group.env))
                self.counters["resampled_stale"] += 1

    def _record(self, kind: str, duration: float, keep: int = 100_000) -> None:
        values = self._durations[kind]
        values.append(duration)
        if len(values) > keep:
            del values[: len(values) - keep]

    def length_report(self) -> dict[str, float]:
        """Durations of the groups the staleness bound removed vs those taken for training: count, mean, p50, p90
        each (running groups count up to their expiry: a lower bound of their length)."""
        with self._cond:
            report: dict[str, float] = {}
            for kind, values in self._durations.items():
                ordered = sorted(values)
                report[f"{kind}_n"] = float(len(ordered))
                if ordered:
                    report[f"{kind}_mean"] = sum(ordered) / len(ordered)
                    report[f"{kind}_p50"] = ordered[len(ordered) // 2]
                    report[f"{kind}_p90"] = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
            return report

    def mark_trained(self, group_ids: list[int]) -> None:
        """The optimizer step that used these groups is done."""
        with self._cond:
            for gid in group_ids:
                self._finish(gid, TRAINED, "")

    def _finish(self, gid: int, state: str, reason: str) -> None:
        entry = self._ledger[gid]
        if entry.state in TERMINAL:
            raise RuntimeError(f"group {gid} already ended as {entry.state}, cannot end it again as {state}")
        entry.state, entry.reason = state, reason
        self.counters[state if not reason else f"{state}/{reason}"] += 1

    def cancel_open(self, reason: str) -> int:
        """End every group that is not terminal yet as `failed/<reason>` (run end: in-flight and queued groups
        that will never be trained are accounted for, not forgotten). Returns how many."""
        with self._cond:
            open_ids = [gid for gid, e in self._ledger.items() if e.state not in TERMINAL]
            for gid in open_ids:
                self._finish(gid, FAILED, reason)
            self._slots.clear()
            self._backlog.clear()
            self._cond.notify_all()
            return len(open_ids)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- introspection ------------------------------------------------------------------------------
    def depth(self) -> dict[str, int]:
        """Groups waiting (completed, not taken), running, and in the re-dispatch backlog."""
        with self._cond:
            done = sum(1 for g in self._slots.values() if g.completed_at is not None)
            return {"completed": done, "running": len(self._slots) - done, "backlog": len(self._backlog)}

    def ledger_summary(self) -> Counter[str]:
        """Count of ledger entries by state (terminal states with their reason)."""
        with self._cond:
            return Counter(e.state if not e.reason else f"{e.state}/{e.reason}" for e in self._ledger.values())

    def ledger(self) -> dict[int, LedgerEntry]:
        with self._cond:
            return {gid: LedgerEntry(e.prompt, e.env, e.state, e.reason, e.attempts) for gid, e in self._ledger.items()}

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The ledger (prompts, states, attempts), id counter and counters; rollouts are not stored: groups
        not yet trained are re-dispatched on resume."""
        with self._cond:
            return {
                "next_id": self._next_id,
                "ledger": {gid: [e.prompt, e.env, e.state, e.reason, e.attempts] for gid, e in self._ledger.items()},
                "backlog": [gid for gid, _, _ in self._backlog],
                "counters": dict(self.counters),
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._cond:
            self._slots.clear()
            self._backlog.clear()
            self._next_id = int(state["next_id"])
            self.counters = Counter(state["counters"])
            self._ledger = {}
            for gid, (prompt, env, st, reason, attempts) in sorted(state["ledger"].items(), key=lambda kv: int(kv[0])):
                gid = int(gid)
                self._ledger[gid] = LedgerEntry(prompt, env, st, reason, attempts)
                if st not in TERMINAL:
                    self._ledger[gid].state = BACKLOG
                    self._backlog.append((gid, prompt, env))
                    self.counters["requeued/resume"] += 1
            # Dispatches after the checkpoint (in the journal only, e.g. before a SIGKILL) are re-dispatched too.
            if self.journal is not None and self.journal.exists():
                for line in self.journal.read_text().splitlines():
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    gid = int(rec["group_id"])
                    if gid in self._ledger:
                        continue
                    self._ledger[gid] = LedgerEntry(rec["prompt"], rec["env"], BACKLOG)
                    self._backlog.append((gid, rec["prompt"], rec["env"]))
                    self.counters["requeued/after_checkpoint"] += 1
                    self._next_id = max(self._next_id, gid + 1)
