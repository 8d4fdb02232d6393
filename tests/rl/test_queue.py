"""Ordering rules, staleness bound, ledger and checkpoint of the windowed FIFO."""

import threading

import pytest

from north_lightning.rl.queue import WindowedFIFO


def _fill(q, n, version=0):
    return [q.dispatch(f"p{i}", "toy", version) for i in range(n)]


def test_strict_fifo_waits_for_the_head():
    q = WindowedFIFO(window=0.0)
    ids = _fill(q, 6)
    for gid in ids[1:5]:
        q.complete(gid, ["r"])
    assert q.take(4, train_step=0, timeout=0.01) is None  # group 0 still running
    q.complete(ids[0], ["r"])
    assert [g.group_id for g in q.take(4, 0, timeout=0.01)] == ids[:4]


def test_window_jumps_at_most_floor_window_times_batch():
    q = WindowedFIFO(window=0.25)  # batch 8 -> at most 2 running groups jumped
    ids = _fill(q, 12)
    for gid in ids:
        if gid not in (0, 3, 5):
            q.complete(gid, ["r"])
    # three stragglers among the first 11: a batch of 8 would need to jump 3 > 2
    assert q.take(8, 0, timeout=0.01) is None
    q.complete(5, ["r"])
    batch = [g.group_id for g in q.take(8, 0, timeout=0.01)]
    # the first 8 completed groups in dispatch order (0 and 3 jumped), input order kept among them
    assert batch == [1, 2, 4, 5, 6, 7, 8, 9]
    # jumped groups stay at the head and are taken first once complete
    q.complete(0, ["r"])
    q.complete(3, ["r"])
    ids2 = _fill(q, 2)
    for gid in ids2:
        q.complete(gid, ["r"])
    assert [g.group_id for g in q.take(4, 0, timeout=0.01)] == [0, 3, 10, 11]


def test_completion_order_window_one_never_waits_for_stragglers():
    q = WindowedFIFO(window=1.0)
    ids = _fill(q, 5)
    q.complete(ids[4], ["r"])
    q.complete(ids[2], ["r"])
    assert sorted(g.group_id for g in q.take(2, 0, timeout=0.01)) == [2, 4]


def test_stale_groups_dropped_and_counted():
    q = WindowedFIFO(window=0.0, max_staleness_steps=2)
    old = _fill(q, 2, version=0)
    new = [q.dispatch("n", "toy", 3)]
    for gid in old + new:
        q.complete(gid, ["r"], steps_seen=[0, 1] if gid in old else [3])
    batch = q.take(1, train_step=3, timeout=0.01)  # staleness 3 > 2 for the old ones
    assert [g.group_id for g in batch] == new
    assert q.counters["dropped_stale/staleness>2"] == 2
    assert q.ledger_summary()["dropped_stale/staleness>2"] == 2
    # staleness uses the oldest version that produced a token, not the dispatch version
    gid = q.dispatch("m", "toy", 5)
    q.complete(gid, ["r"], steps_seen=[2, 5])
    assert q.take(1, train_step=5, timeout=0.01) is None
    assert q.counters["stale_completed"] == 3


def test_running_group_over_the_bound_is_expired_not_waited_for():
    q = WindowedFIFO(window=0.0, max_staleness_steps=1, on_stale="resample")
    a = q.dispatch("a", "toy", 0)
    b = q.dispatch("b", "toy", 2)
    q.complete(b, ["r"], [2])
    assert [g.group_id for g in q.take(1, train_step=2, timeout=0.01)] == [b]
    assert q.counters["stale_running"] == 1 and q.counters["resampled_stale"] == 1
    # the resampled group comes back under its original id; the late result of the old attempt is ignored
    gid, attempt, prompt, env = q.next_redispatch(policy_step=2)
    assert (gid, attempt, prompt) == (a, 2, "a")
    q.complete(a, ["old"], [0], attempt=1)
    assert q.counters["late_completion_discarded"] == 1
    q.complete(a, ["new"], [2], attempt=2)
    assert q.take(1, 2, timeout=0.01)[0].rollouts == ["new"]


def test_ledger_every_prompt_ends_once_and_resume_redispatches_untrained():
    q = WindowedFIFO(window=0.0, max_staleness_steps=10)
    ids = _fill(q, 6)
    for gid in ids[:4]:
        q.complete(gid, ["r"])
    batch = q.take(2, 0, timeout=0.01)
    q.mark_trained([g.group_id for g in batch])
    q.take(2, 0, timeout=0.01)  # taken, not trained when the checkpoint is written
    q.fail(ids[5], "container_died")
    state = q.state_dict()

    resumed = WindowedFIFO(window=0.0, max_staleness_steps=10)
    resumed.load_state_dict(state)
    # groups 2,3 (taken), 4 (running) must be re-dispatched; 0,1 trained; 5 failed
    again = []
    while (item := resumed.next_redispatch(policy_step=1)) is not None:
        again.append(item[0])
    assert again == [2, 3, 4]
    assert resumed.counters["requeued/resume"] == 3
    for gid in again:
        resumed.complete(gid, ["r"], [1])
    resumed.mark_trained([g.group_id for g in resumed.take(3, 1, timeout=0.01)])
    summary = resumed.ledger_summary()
    assert summary == {"trained": 5, "failed/container_died": 1}
    with pytest.raises(RuntimeError, match="already ended"):
        resumed.mark_trained([0])
    # new dispatches continue the id sequence
    assert resumed.dispatch("x", "toy", 1) == 6


def test_take_blocks_until_a_producer_thread_completes():
    q = WindowedFIFO(window=0.0)
    ids = _fill(q, 3)

    def produce():
        for gid in reversed(ids):
            q.complete(gid, ["r"])

    t = threading.Timer(0.05, produce)
    t.start()
    batch = q.take(3, 0, timeout=5.0)
    t.join()
    assert [g.group_id for g in batch] == ids
    q.close()
    assert q.take(1, 0, timeout=5.0) is None


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="window"):
        WindowedFIFO(window=1.5)
    with pytest.raises(ValueError, match="on_stale"):
        WindowedFIFO(on_stale="keep")


def test_journal_recovers_dispatches_made_after_the_checkpoint(tmp_path):
    journal = tmp_path / "dispatch.jsonl"
    q = WindowedFIFO(window=0.0, journal=journal)
    _fill(q, 2)
    state = q.state_dict()  # checkpoint knows groups 0, 1
    _fill(q, 3)  # 2, 3, 4 dispatched afterwards, then the process is SIGKILLed
    resumed = WindowedFIFO(window=0.0, journal=journal)
    resumed.load_state_dict(state)
    again = []
    while (item := resumed.next_redispatch(0)) is not None:
        again.append(item[0])
    assert again == [0, 1, 2, 3, 4]
    assert resumed.counters["requeued/after_checkpoint"] == 3
    assert resumed.dispatch("new", "toy", 0) == 5
    assert resumed.cancel_open("run_end") == 6
    assert resumed.ledger_summary() == {"failed/run_end": 6}


def test_admits_bounds_dispatch_by_the_groups_queued_ahead():
    """Backpressure: with 2 groups per batch and a 1-step bound, a group sampled by the step-0 weights can join batch
    0 or 1, so at most 3 groups may be queued ahead of it; a re-dispatch backlog does not count against its head."""
    q = WindowedFIFO(window=0.0, max_staleness_steps=1)
    for i in range(3):
        assert q.admits(policy_step=0, next_batch=0, batch_size=2)
        q.dispatch(f"p{i}", "toy", 0)
    assert q.admits(0, 0, 2)  # 3 ahead: batch 1 at the latest
    q.dispatch("p3", "toy", 0)
    assert not q.admits(0, 0, 2) and q.counters["backpressure_waits"] == 1  # would land in batch 2 > 0 + 1
    assert q.admits(policy_step=1, next_batch=0, batch_size=2)  # newer weights: one more step of room
    assert not q.admits(policy_step=0, next_batch=1, batch_size=2)  # the trainer moved on, these weights aged
    q.requeue(3, "engine_died")
    assert q.admits(0, 0, 2)  # the backlog's head only has the 3 queued groups ahead of it
