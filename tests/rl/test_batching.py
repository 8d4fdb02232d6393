"""CallBatcher: concurrent calls from threads are combined into batched calls of the wrapped function, each
caller gets exactly its own results, failures reach every caller of the failing batch."""

import threading
import time

import pytest

from north_lightning.rl.engines.batching import CallBatcher


def test_concurrent_calls_share_batches_and_get_their_own_results():
    seen: list[list[int]] = []
    gate = threading.Event()

    def square(items):
        seen.append(list(items))
        if len(seen) == 1:
            gate.wait(5)  # hold the first batch so the other callers pile up behind it
        return [x * x for x in items]

    batcher = CallBatcher(square)
    results: dict[int, list[int]] = {}

    def call(i):
        results[i] = batcher.run([i, i + 100])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    threads[0].start()
    time.sleep(0.1)
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == {i: [i * i, (i + 100) ** 2] for i in range(6)}
    assert len(seen) == 2 and sorted(x for b in seen for x in b) == sorted(x for i in range(6) for x in (i, i + 100))
    assert batcher.calls == 6 and batcher.batches == 2 and batcher.max_batch_items == 10


def test_max_items_splits_batches_and_errors_reach_each_caller_of_the_batch():
    calls: list[int] = []

    def fn(items):
        calls.append(len(items))
        if "bad" in items:
            raise RuntimeError("engine died")
        return items

    batcher = CallBatcher(fn, max_items=3)
    assert batcher.run(["a", "b", "c", "d"]) == ["a", "b", "c", "d"]  # one oversized call still runs whole
    with pytest.raises(RuntimeError, match="engine died"):
        batcher.run(["bad"])
    assert batcher.run(["ok"]) == ["ok"]  # the batcher is usable after a failure
    assert calls == [4, 1, 1]

    def short(items):
        return items[:-1]

    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        CallBatcher(short).run([1, 2])
