"""Combine concurrent `generate` calls from rollout threads into one engine call.

Why: every episode is its own thread (the agent loop waits on the sandbox between turns), and each asks the
engine for one turn at a time. An in-process `vllm.LLM` is not thread-safe, so those calls used to run one after
another, each decoding a single sequence: the engine's per-step overhead was paid per sequence, and sampling
was the slowest part of a CPU rollout (seconds per turn while the tiny model needs milliseconds). Batched, one
decoding pass serves every waiting turn. A `vllm serve` sampler batches concurrent HTTP requests itself and
does not need this.

No added latency: the first caller to find the engine idle becomes the leader and runs everything pending at
once; calls arriving meanwhile wait and form the next batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class _Call:
    items: Sequence[Any]
    result: list[Any] | None = None
    error: BaseException | None = None
    done: bool = False


class CallBatcher:
    """`run(items)` from any thread returns `fn(items)`'s results for those items, with `fn` called on the
    concatenation of whatever calls were waiting together (results in order, one per item). An exception of
    `fn` is raised in every call of that batch."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_items: int = 256) -> None:
        self.fn, self.max_items = fn, max_items
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._busy = False
        self.calls = self.batches = 0  # counters: requests served, engine calls made
        self.max_batch_items = 0

    def run(self, items: Sequence[Any]) -> list[Any]:
        call = _Call(items)
        with self._cond:
            self._pending.append(call)
            while not call.done and self._busy:
                self._cond.wait()
            if call.done:
                return self._unwrap(call)
            self._busy = True  # this thread leads the next batch, its own call first
            self._pending.remove(call)
            batch = self._take([call])
        try:
            out = self.fn([item for c in batch for item in c.items])
            if len(out) != sum(len(c.items) for c in batch):
                raise RuntimeError(f"batched call returned {len(out)} results for {sum(len(c.items) for c in batch)} items")
            start = 0
            for c in batch:
                c.result = list(out[start:start + len(c.items)])
                start += len(c.items)
        except BaseException as err:  # every caller of this batch sees the failure (EngineDied re-queues them)
            for c in batch:
                c.error = err
        finally:
            with self._cond:
                for c in batch:
                    c.done = True
                self.calls += len(batch)
                self.batches += 1
                self.max_batch_items = max(self.max_batch_items, sum(len(c.items) for c in batch))
                self._busy = False
                self._cond.notify_all()
        return self._unwrap(call)

    def _take(self, batch: list[_Call]) -> list[_Call]:
        """`batch` plus pending calls, oldest first, while the total stays within `max_items` items."""
        n = sum(len(c.items) for c in batch)
        while self._pending and n + len(self._pending[0].items) <= self.max_items:
            call = self._pending.pop(0)
            batch.append(call)
            n += len(call.items)
        return batch

    @staticmethod
    def _unwrap(call: _Call) -> list[Any]:
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result
