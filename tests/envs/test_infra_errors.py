"""Infrastructure failures are not rewards: an environment that cannot start (a real missing image), a start
fault that clears on retry, and a grader that cannot set up end as `infra_error:*`, are retried, and are left
out of pass@k denominators, the task filter and (RL) the advantages, with `rl/infra_error_rate` logged."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import pytest

from north_lightning.cli.eval import EvalConfig, run_eval
from north_lightning.cli.tasks import filter_tasks
from north_lightning.envs.sandbox import SandboxError
from north_lightning.envs.session import TaskSession
from north_lightning.envs.tasks import BUNDLED_DIR, load_swe_jsonl
from north_lightning.rl.rollout import RolloutConfig, run_episode, run_episode_retrying
from north_lightning.rl.scripted_policy import OraclePolicy

pytestmark = [pytest.mark.docker]
MISSING_IMAGE = "north-lightning/missing-image:never-built"


@pytest.fixture(scope="module", autouse=True)
def no_registry():
    """Images come from the engine or their recipe only: no pull is tried (nothing leaves this machine)."""
    from north_lightning.envs.session import configure_image_resolver

    configure_image_resolver(pull_policy="never")
    yield
    configure_image_resolver()


@pytest.fixture(scope="module")
def swe_pool(tmp_path_factory, bundled_tasks):
    """A bundled SWE task plus one whose instance image does not exist and which carries no recipe."""
    root = tmp_path_factory.mktemp("pool")
    shutil.copytree(BUNDLED_DIR / "swe", root / "swe")
    records = [json.loads(line) for line in (root / "swe" / "tasks.jsonl").read_text().splitlines()]
    missing = dict(records[0], instance_id="north-lightning__missing-1", image=MISSING_IMAGE,
                   repo="north-lightning/missing",  # no repos/ copy: no recipe to build from
                   problem_statement="A task whose environment image was never built.")
    (root / "swe" / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [records[0], missing]))
    return root / "swe" / "tasks.jsonl"


def test_environment_that_never_starts_is_retried_then_infra_error(tokenizer, swe_pool):
    good, missing = load_swe_jsonl(swe_pool)
    policy = OraclePolicy(tokenizer, "swe_agent", [good, missing])
    starts = []

    def counting_session(task, **kw):
        starts.append(task.task_id)
        return TaskSession(task, **kw)

    config = RolloutConfig(max_tokens_per_turn=1024, infra_retries=2)
    ep = run_episode_retrying(lambda: run_episode(policy, "swe_agent", tokenizer, missing, config=config,
                                                  session_factory=counting_session), missing, retries=2)
    assert ep.infra_error and ep.end_reason == "infra_error:env_start:ImageUnavailable" and ep.reward == 0.0
    assert len(starts) == 3 and ep.timings["infra_attempts"] == 3 and "pull_policy='never'" in ep.verifier["error"]


def test_start_fault_that_clears_is_retried_and_scored(tokenizer, swe_pool):
    good, _ = load_swe_jsonl(swe_pool)
    policy = OraclePolicy(tokenizer, "swe_agent", [good])
    calls = []

    def fault_injecting_session(task, **kw):  # a fault we cannot provoke on demand: the engine refusing once
        calls.append(1)
        if len(calls) == 1:
            raise SandboxError("injected fault: cannot start a container (engine busy)")
        return TaskSession(task, **kw)

    config = RolloutConfig(max_tokens_per_turn=1024)
    ep = run_episode_retrying(lambda: run_episode(policy, "swe_agent", tokenizer, good, config=config,
                                                  session_factory=fault_injecting_session), good, retries=2)
    assert (ep.reward, ep.end_reason, ep.infra_error) == (1.0, "submitted", False)
    assert ep.timings["infra_attempts"] == 1 and len(calls) == 2


def test_grader_that_cannot_set_up_is_an_infra_error_not_a_zero(tokenizer, swe_pool):
    good, _ = load_swe_jsonl(swe_pool)
    broken = dataclasses.replace(good, test_patch="diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n"
                                                  "@@ -1 +1 @@\n-a\n+b\n")
    policy = OraclePolicy(tokenizer, "swe_agent", [broken])
    ep = run_episode(policy, "swe_agent", tokenizer, broken, config=RolloutConfig(max_tokens_per_turn=1024))
    assert ep.end_reason == "infra_error:test_patch_failed" and ep.reward == 0.0 and ep.infra_error


def test_pass_at_k_and_filter_leave_infra_errors_out(swe_pool, tmp_path):
    cfg = EvalConfig(tasks=[str(swe_pool)], policy={"class_path": "north_lightning.rl.scripted_policy.OraclePolicy"},
                     harness="swe_agent", n_samples=2, k=[1], seeds=[0], max_tokens_per_turn=1024, concurrency=2,
                     out=str(tmp_path / "report"), transcripts=False)
    report = run_eval(cfg)
    summary = report["summary"]
    assert summary["pass@1"]["per_seed"] == [1.0]  # the task that never started is no 0 in the mean
    assert summary["infra_errors"] == 2 and summary["end_reasons"]["infra_error:env_start:ImageUnavailable"] == 2
    assert summary["infra_error_rate"] == pytest.approx(6 / 8)  # 3 failing runs for each of 2 samples, 2 good runs
    missing = next(t for t in report["tasks"] if t["task_id"] == "north-lightning__missing-1")
    assert all(s["infra_error"] and s["infra_attempts"] == 3 for s in missing["samples"])
    filtered = filter_tasks(report, low=0.0, high=1.0, k=1)
    assert filtered["dropped"]["infra_error"] == 1 and filtered["dropped"]["never_solved"] == 0
    assert [t["task_id"] for t in filtered["kept"]] == ["north-lightning__textstats-1"]


def test_rl_groups_with_infra_errors_fail_once_and_are_not_trained(tokenizer, swe_pool, tmp_path):
    from north_lightning.rl.env_specs import EnvSpec
    from north_lightning.rl.sampler import RolloutService
    from north_lightning.rl.spool import RolloutSpool

    good, missing = load_swe_jsonl(swe_pool)
    service = RolloutService(
        engine=OraclePolicy(tokenizer, "swe_agent", [good, missing]), tokenizer=tokenizer,
        envs=[EnvSpec(name="swe", tasks=str(swe_pool), harness="swe_agent")], tasks={"swe": [good, missing]},
        spool=RolloutSpool(tmp_path / "spool"), groups_per_step=1, group_size=2, mode="async", num_workers=1,
        rollout_config=RolloutConfig(max_tokens_per_turn=1024, infra_retries=1), seed=3)
    try:
        service.start(0)
        batch = service.spool.get(0, timeout=300)
        deadline = time.monotonic() + 240
        while not service.queue.counters.get("failed/infra_error") and time.monotonic() < deadline:
            time.sleep(0.5)
        stats = service.stats()
    finally:
        service.stop(timeout=120)
    assert not service.errors
    assert [g["task_id"] for g in batch["groups"]] == [good.task_id]  # only a working environment is trained on
    assert "rl/infra_error_rate" in batch["sampler_stats"]  # logged by the RL module with the batch
    assert all(r["reward"] == 1.0 for r in batch["groups"][0]["rollouts"])
    assert service.queue.counters["failed/infra_error"] >= 1 and stats["rl/infra_error_rate"] > 0
    ledger = service.queue.ledger()
    failed = [e for e in ledger.values() if e.reason == "infra_error"]
    assert failed and all(e.state == "failed" and e.prompt["task_id"] == missing.task_id and e.attempts == 1
                          for e in failed)
    summary = service.queue.ledger_summary()
    assert sum(summary.values()) == len(ledger)  # one state per dispatched prompt
