"""Per-token policy versions after the engine: packed as `token_versions` (aligned with targets; segments without
per-token versions take their turn's version), counted as `rl/tokens_across_update` in the batch statistics, and
logged by the RL module as the version lag of the trained tokens (mean, max, share per lag)."""

import csv

import lightning as L
import torch
from torch.utils.data import DataLoader

from north_lightning.datamodules.rl import global_batch_stats, pack_rollouts, rollout_token_versions
from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.modules.rl import RLModule

CFG = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
           head_dim=16, num_experts=4, num_experts_per_tok=2, expert_intermediate_size=16,
           dense_intermediate_size=32, first_k_dense=1, sliding_window=8, max_position_embeddings=64)


def _rollout() -> dict:
    # turn 1 was generated across an export (versions 3 -> 4); turn 2 comes from an engine without per-token
    # versions, so it takes the rollout's per-turn version (4)
    return {"task_id": "t", "reward": 1.0, "versions": [3, 4], "segments": [
        {"token_ids": [1, 5, 6], "logprobs": None, "trainable": False},
        {"token_ids": [7, 8, 9, 10], "logprobs": [-1.0] * 4, "trainable": True, "versions": [3, 3, 4, 4]},
        {"token_ids": [11, 12], "logprobs": None, "trainable": False},
        {"token_ids": [13, 14], "logprobs": [-1.0] * 2, "trainable": True}]}


def test_token_versions_are_packed_per_target_and_spanning_turns_counted():
    r = _rollout()
    assert rollout_token_versions(r) == [-1, -1, -1, 3, 3, 4, 4, -1, -1, 4, 4]
    out = pack_rollouts([(r, 1.0)], row_tokens=16, pad_id=0)
    mask = out["targets"] != -100
    assert out["token_versions"][mask].tolist() == [3, 3, 4, 4, 4, 4]
    assert out["token_versions"][~mask].eq(-1).all()
    stats = global_batch_stats({"groups": [{"rollouts": [r, r]}]}, ())
    assert stats["rl/tokens_across_update"] == 8.0  # the spanning turn of each rollout


def test_rl_module_logs_the_version_lag_of_trained_tokens(tmp_path):
    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig(**CFG))
    model.save_pretrained(tmp_path / "init")
    batch = pack_rollouts([(_rollout(), 1.0)], row_tokens=16, pad_id=0)
    batch["num_tokens"] = torch.tensor(6.0)
    module = RLModule(model=CFG, init_from=str(tmp_path / "init"), lr=1e-3)
    module.policy_version = 5  # the trainer is at version 5: lags 2, 2, 1, 1, 1, 1
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1)
    trainer.fit(module, DataLoader([batch], batch_size=None))
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = {k: float(v) for r in rows for k, v in r.items() if k.startswith("rl/version_lag") and v}
    assert abs(logged["rl/version_lag_mean"] - 8 / 6) < 1e-6 and logged["rl/version_lag_max"] == 2.0
    assert abs(logged["rl/version_lag/1"] - 4 / 6) < 1e-6 and abs(logged["rl/version_lag/2"] - 2 / 6) < 1e-6


def test_sidecar_refuses_an_unknown_weight_update_mode():
    import pytest

    from north_lightning.callbacks.vllm_sidecar import VLLMSidecar

    with pytest.raises(ValueError, match="weight_update_mode must be one of .*'keep', 'recompute', 'drain'.*'pause'"):
        VLLMSidecar(envs=[{"name": "e", "tasks": "t"}], weight_update_mode="pause")
