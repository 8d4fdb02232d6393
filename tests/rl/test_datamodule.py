"""RL datamodule: packing contract, RLOO advantages on tokens, global token count, and rank x worker sharding
(no group trained twice or skipped)."""

import random

import pytest
import torch
from torch.utils.data import DataLoader

from north_lightning.datamodules.rl import RolloutBatchStream, pack_rollouts, trainable_targets
from north_lightning.rl.spool import RolloutSpool


def rollout(rng, task, reward, env="toy"):
    prompt = [1] + [rng.randrange(3, 100) for _ in range(rng.randrange(2, 6))]
    turn1 = [rng.randrange(3, 100) for _ in range(rng.randrange(1, 5))]
    obs = [rng.randrange(3, 100) for _ in range(rng.randrange(1, 4))]
    turn2 = [rng.randrange(3, 100) for _ in range(rng.randrange(1, 5))]
    seg = lambda ids, trainable: {"token_ids": ids, "trainable": trainable,  # noqa: E731
                                  "logprobs": [-0.1 * (i + 1) for i in range(len(ids))] if trainable else None}
    return {"task_id": task, "env": env, "reward": reward, "end_reason": "submitted", "steps": 2, "versions": [3],
            "segments": [seg(prompt, False), seg(turn1, True), seg(obs, False), seg(turn2, True)]}


def make_spool(tmp_path, steps=3, groups=6, group_size=4, seed=0):
    rng = random.Random(seed)
    spool = RolloutSpool(tmp_path / "rollouts")
    gid = 0
    for i in range(steps):
        batch = {"index": i, "groups": []}
        for _ in range(groups):
            batch["groups"].append({"group_id": gid, "staleness": gid % 3, "rollouts": [
                rollout(rng, f"t{gid}", float(rng.random() < 0.5)) for _ in range(group_size)]})
            gid += 1
        spool.put(i, batch)
    return spool


def test_pack_contract_targets_logprobs_advantages():
    rng = random.Random(1)
    a, b = rollout(rng, "a", 1.0), rollout(rng, "b", 0.0)
    out = pack_rollouts([(a, 0.5), (b, -0.5)], row_tokens=64, pad_id=0)
    ids_a = [t for s in a["segments"] for t in s["token_ids"]]
    n_a = len(ids_a)
    assert out["input_ids"][0, :n_a].tolist() == ids_a
    assert out["position_ids"][0, :n_a].tolist() == list(range(n_a))
    assert out["position_ids"][0, n_a] == 0 and out["document_ids"][0, n_a] == 1
    # target of position t is token t+1 where token t+1 was generated; the last token of a doc predicts nothing
    p, t1 = len(a["segments"][0]["token_ids"]), a["segments"][1]["token_ids"]
    assert out["targets"][0, p - 1 : p - 1 + len(t1)].tolist() == t1
    assert out["targets"][0, : p - 1].eq(-100).all() and out["targets"][0, n_a - 1] == -100
    assert out["sampler_logprobs"][0, p - 1] == pytest.approx(-0.1)
    mask = out["targets"] != -100
    assert int(mask.sum()) == trainable_targets(a) + trainable_targets(b)
    assert set(out["advantages"][mask].tolist()) == {0.5, -0.5}
    assert out["advantages"][~mask].eq(0).all() and out["sampler_logprobs"][~mask].eq(0).all()
    with pytest.raises(ValueError, match="row_tokens"):
        pack_rollouts([(a, 1.0)], row_tokens=4, pad_id=0)


@pytest.mark.parametrize("world,workers,micro", [(1, 0, 1), (2, 2, 2), (3, 2, 3)])
def test_rank_and_worker_sharding_covers_every_group_once(tmp_path, world, workers, micro):
    steps = 3
    make_spool(tmp_path, steps=steps)
    seen: dict[int, list[tuple[int, int]]] = {}
    tokens = {}
    for rank in range(world):
        stream = RolloutBatchStream(tmp_path / "rollouts", micro_batches=micro, row_tokens=64, pad_id=0,
                                    rank=rank, world_size=world, timeout_s=0.5)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        items = []
        for _, item in zip(range(steps * micro), loader):
            items.append(item)
        # items arrive in (step, micro) order although different workers built them
        assert [(it["meta"]["step"], it["meta"]["micro"]) for it in items] == [(i, m) for i in range(steps) for m in range(micro)]
        for it in items:
            tokens[(rank, it["meta"]["step"], it["meta"]["micro"])] = int((it["targets"] != -100).sum())
            seen.setdefault(it["meta"]["step"], []).extend((rank, g) for g in it["meta"]["group_ids"] if it["meta"]["micro"] == 0)
            assert it["num_tokens"].item() > 0
    for i in range(steps):
        groups = sorted(g for _, g in seen[i])
        assert groups == list(range(i * 6, (i + 1) * 6))  # every group of the step exactly once over all ranks
    # the global token count equals the trainable tokens actually present over ranks and micro-batches
    stream = RolloutBatchStream(tmp_path / "rollouts", micro_batches=micro, row_tokens=64, pad_id=0, rank=0, world_size=1)
    for i in range(steps):
        total = sum(v for (r, s, m), v in tokens.items() if s == i)
        assert stream.micro_batch(stream.spool.get(i, 1), 0, 0, 1)["num_tokens"].item() == total


def test_resume_starts_at_the_step_and_spool_discard(tmp_path):
    spool = make_spool(tmp_path, steps=3)
    stream = RolloutBatchStream(spool.dir, micro_batches=1, row_tokens=64, pad_id=0, start_step=2, rank=0, world_size=1)
    first = next(iter(stream))
    assert first["meta"]["step"] == 2
    assert spool.discard_from(1) == 2
    with pytest.raises(TimeoutError, match="no rollout batch 1"):
        spool.get(1, timeout=0.1)


def test_advantages_are_rloo_of_the_group(tmp_path):
    spool = RolloutSpool(tmp_path / "s")
    rng = random.Random(0)
    group = {"group_id": 0, "staleness": 0, "rollouts": [rollout(rng, "t", r) for r in (1.0, 0.0, 0.0, 1.0)]}
    spool.put(0, {"index": 0, "groups": [group]})
    item = next(iter(RolloutBatchStream(spool.dir, micro_batches=1, row_tokens=64, pad_id=0, rank=0, world_size=1)))
    adv_by_doc = {}
    for d in range(4):
        sel = (item["document_ids"][0] == d) & (item["targets"][0] != -100)
        adv_by_doc[d] = set(item["advantages"][0][sel].tolist())
    values = sorted(v for s in adv_by_doc.values() for v in s)
    assert values == [pytest.approx(-2 / 3)] * 2 + [pytest.approx(2 / 3)] * 2
    assert item["meta"]["stats"]["rl/reward_mean"] == 0.5
    assert item["meta"]["stats"]["rl/pass@1/toy"] == 0.5
    assert torch.isfinite(item["sampler_logprobs"]).all()


def test_lazy_stream_yields_descriptors_resolved_before_the_step(tmp_path):
    """Lightning fetches batch k+1 before training batch k; lazy items must not wait for the spool."""
    make_spool(tmp_path, steps=1)
    stream = RolloutBatchStream(tmp_path / "rollouts", micro_batches=2, row_tokens=64, pad_id=0, rank=0, world_size=1,
                                lazy=True, timeout_s=0.1)
    it = iter(stream)
    items = [next(it) for _ in range(4)]  # batch 1 does not exist yet: descriptors are still produced
    assert [i["rl_batch"] for i in items] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert stream.resolve(0, 1)["meta"]["micro"] == 1
    with pytest.raises(TimeoutError):
        stream.resolve(1, 0)


def test_waiting_for_a_batch_gives_way_to_sigterm(tmp_path):
    """Lightning acts on SIGTERM only between batches: a trainer waiting for a stalled sampler must not sit out
    its whole timeout (SLURM would SIGKILL it first)."""
    import time

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    spool = RolloutSpool(tmp_path)
    flag = {"sigterm": False}
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        spool.get(0, timeout=0.3, stop=lambda: flag["sigterm"])
    flag["sigterm"] = True
    stream = RolloutBatchStream(tmp_path, micro_batches=1, row_tokens=64, pad_id=0, timeout_s=600, lazy=True,
                                stop=lambda: flag["sigterm"])
    with pytest.raises(SIGTERMException, match="batch 0"):
        stream.resolve(0, 0)
    assert time.monotonic() - start < 5


def test_eager_reads_refused_where_the_checkpoint_is_restored_after_fit_start():
    """Under sharding strategies the sampler starts in `on_train_start`, after Lightning's first fetch: an eager
    main-process read there would wait for a batch nobody writes yet, so `setup` says so instead of hanging."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy

    from north_lightning.callbacks.vllm_sidecar import VLLMSidecar
    from north_lightning.datamodules.rl import RLDataModule
    from north_lightning.modules.strategy import NorthParallelStrategy

    sidecar = VLLMSidecar(envs=[{"name": "terminal", "tasks": "toy:train:2:0", "harness": "swe_agent"}])
    sharded = NorthParallelStrategy(expert_parallel_size=1)
    trainer = SimpleNamespace(world_size=1, strategy=sharded, datamodule=RLDataModule(lazy=False))
    with pytest.raises(ValueError, match="restores checkpoints after `on_fit_start`.*data.lazy=true"):
        sidecar.setup(trainer, None, "fit")
    for ok in (RLDataModule(lazy=True), RLDataModule(lazy=False, num_workers=1)):
        sidecar.setup(SimpleNamespace(world_size=1, strategy=sharded, datamodule=ok), None, "fit")
    sidecar.setup(SimpleNamespace(world_size=1, strategy=DDPStrategy(), datamodule=RLDataModule(lazy=False)), None, "fit")
