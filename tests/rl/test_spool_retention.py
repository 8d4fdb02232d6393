"""Spool retention (callbacks/spool_retention.py) in a real Lightning run of the RLModule over RLDataModule: batches
are deleted once trained and older than the oldest checkpoint on disk, so a 24-step run keeps a bounded number of
batch files (not 25), and a run resumed from the oldest kept checkpoint reads the kept batches and reproduces the
uninterrupted run's losses exactly (CPU)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from north_lightning.callbacks.spool_retention import checkpoint_step, kept_checkpoint_steps, prune_spool
from north_lightning.datamodules.rl import RLDataModule
from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.modules.rl import RLModule
from north_lightning.rl.spool import RolloutSpool

STEPS, EVERY, KEEP, AHEAD = 24, 3, 2, 1
OVERRIDES = {"num_hidden_layers": 1, "router_aux_loss_coef": 0.0}


def rollout_batch(index: int) -> dict:
    """Global batch `index`: 2 groups x 2 rollouts, a prompt and a generated segment each (seeded by index)."""
    gen = torch.Generator().manual_seed(index)
    groups = []
    for g in range(2):
        rollouts = []
        for j in range(2):
            n = int(torch.randint(4, 16, (1,), generator=gen))
            segments = [{"token_ids": torch.randint(3, 4096, (5,), generator=gen).tolist(), "logprobs": None,
                         "trainable": False},
                        {"token_ids": torch.randint(3, 4096, (n,), generator=gen).tolist(),
                         "logprobs": (-8.3 + 0.3 * torch.randn(n, generator=gen)).tolist(), "trainable": True}]
            rollouts.append({"task_id": f"t{g}", "reward": float(j == g), "versions": [0], "segments": segments})
        groups.append({"group_id": 2 * index + g, "task_id": f"t{g}", "staleness": 0, "rollouts": rollouts})
    return {"index": index, "policy_version": 0, "sampler_run": "retention-test", "groups": groups}


class ScriptedSampler(L.Callback):
    """Stands in for the sampler side of `VLLMSidecar`: writes batches AHEAD steps ahead of the trainer (a batch
    already on disk is kept, as a replay of the same data), and after each optimizer step prunes the spool with the
    sidecar's own rule; records the batch files on disk after each step and the losses."""

    def __init__(self, spool: RolloutSpool) -> None:
        self.spool, self.files, self.losses, self.share = spool, [], {}, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        for i in range(trainer.global_step, trainer.global_step + AHEAD + 1):
            if not self.spool.path(i).exists():
                self.spool.put(i, rollout_batch(i))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = float(pl_module.last_loss_share)
        prune_spool(trainer, self.spool)
        nxt = trainer.global_step + AHEAD
        if not self.spool.path(nxt).exists():
            self.spool.put(nxt, rollout_batch(nxt))
        self.files.append(len(self.spool.indices()))


def _fit(run: Path, init: Path, resume: Path | None = None) -> ScriptedSampler:
    torch.set_num_threads(1)
    L.seed_everything(0)
    spool = RolloutSpool(run / "rollouts")
    sampler = ScriptedSampler(spool)
    checkpoints = ModelCheckpoint(dirpath=run / "checkpoints", every_n_train_steps=EVERY, save_top_k=KEEP,
                                  monitor="step", mode="max")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, default_root_dir=run, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[sampler, checkpoints])
    module = RLModule(init_from=str(init), config_overrides=OVERRIDES, lr=1e-3, warmup_steps=1)
    trainer.fit(module, datamodule=RLDataModule(spool_dir=str(spool.dir), row_tokens=64, timeout_s=30),
                ckpt_path=resume)
    return sampler


@pytest.mark.slow
def test_spool_stays_bounded_and_the_oldest_kept_checkpoint_resumes_on_the_kept_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    NorthForCausalLM(NorthConfig.preset("tiny", **OVERRIDES)).save_pretrained(tmp_path / "init")
    run = tmp_path / "run"
    first = _fit(run, tmp_path / "init")
    assert len(first.losses) == STEPS

    kept = sorted(checkpoint_step(p) for p in (run / "checkpoints").glob("*.ckpt"))
    assert kept == [STEPS - EVERY, STEPS]
    # at most: the batches from the oldest kept checkpoint (KEEP checkpoints EVERY steps apart, the newest not yet
    # saved when the pruning runs) to the prefetch horizon; without retention all STEPS + AHEAD would stay
    bound = KEEP * EVERY + AHEAD + 1
    assert max(first.files) <= bound < STEPS, first.files
    assert first.files[-1] <= bound
    # what is left starts at the oldest checkpoint that was kept when the last pruning ran (step 18; 21's file
    # was written after it) and covers everything a resume from any kept checkpoint reads
    left = RolloutSpool(run / "rollouts").indices()
    assert left[0] <= min(kept) and left == list(range(left[0], STEPS + AHEAD + 1))
    assert not RolloutSpool(run / "rollouts").path(0).exists()

    oldest = next(p for p in (run / "checkpoints").glob("*.ckpt") if checkpoint_step(p) == min(kept))
    resumed = _fit(run, tmp_path / "init", resume=oldest)
    assert sorted(resumed.losses) == list(range(min(kept) + 1, STEPS + 1))
    for step, loss in resumed.losses.items():
        assert loss == first.losses[step], (step, loss, first.losses[step])


def test_prune_below_and_unreadable_checkpoint_deletes_nothing(tmp_path: Path) -> None:
    spool = RolloutSpool(tmp_path / "spool")
    for i in range(5):
        spool.put(i, {"index": i, "groups": []})
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "broken.ckpt").write_bytes(b"not a checkpoint")

    class Trainer:  # only what prune_spool reads: the step and the ModelCheckpoint callbacks
        global_step = 4
        checkpoint_callbacks = [ModelCheckpoint(dirpath=tmp_path / "ckpts")]

    assert kept_checkpoint_steps(Trainer()) is None
    assert prune_spool(Trainer(), spool) == [] and spool.indices() == [0, 1, 2, 3, 4]
    (tmp_path / "ckpts" / "broken.ckpt").unlink()
    assert prune_spool(Trainer(), spool) == [0, 1, 2, 3]  # no checkpoint on disk: consumed batches go
    assert spool.indices() == [4]
