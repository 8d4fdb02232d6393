"""The rollout spool stores batches without pickle: round trip exact, and a pickle planted at a batch's path is
refused, never run (write access to the run directory must not be code execution in the trainer)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import CodeRunningPickle
from north_lightning.rl.spool import RolloutSpool


def _batch() -> dict:
    rollout = {"task_id": "t", "env": "terminal", "reward": 1.0, "end_reason": "submitted", "steps": 2,
               "versions": [3, 4], "segments": [{"token_ids": [1, 2, 2 ** 40], "logprobs": [-0.1, -1e-30, -7.5],
                                                 "trainable": True},
                                                {"token_ids": [5], "logprobs": None, "trainable": False},
                                                {"token_ids": [], "logprobs": [], "trainable": False}]}
    return {"index": 7, "policy_version": 4, "sampler_run": "abc", "sampler_stats": {"rl/queue_backlog": 3,
            "rl/sampler_tokens_per_s": float("nan")},
            "groups": [{"group_id": 11, "task_id": "t", "env": "terminal", "staleness": 0, "rollouts": [rollout]}]}


def test_round_trip_is_exact_and_the_file_is_safetensors(tmp_path):
    spool = RolloutSpool(tmp_path)
    spool.put(7, _batch())
    path = spool.path(7)
    assert path.name == "batch_00000007.safetensors" and not list(tmp_path.glob(".*tmp"))
    got = spool.get(7, timeout=1)
    assert math.isnan(got["sampler_stats"].pop("rl/sampler_tokens_per_s"))
    want = _batch()
    want["sampler_stats"].pop("rl/sampler_tokens_per_s")
    assert got == want
    seg = got["groups"][0]["rollouts"][0]["segments"][0]
    assert type(seg["token_ids"][0]) is int and type(seg["logprobs"][0]) is float
    assert path.read_bytes()[:2] != b"PK"  # not a torch.save zip


def test_non_plain_data_is_refused_on_write(tmp_path):
    with pytest.raises(TypeError):
        RolloutSpool(tmp_path).put(0, {"groups": [], "x": torch.zeros(2)})


def test_a_planted_pickle_is_refused_not_run(tmp_path):
    spool = RolloutSpool(tmp_path / "rollouts")
    marker = tmp_path / "pwned"
    torch.save({"index": 0, "groups": [], "payload": CodeRunningPickle(marker)}, spool.path(0))
    with pytest.raises(Exception) as err:
        spool.get(0, timeout=1)
    assert not marker.exists(), "reading the spool ran code from the batch file"
    assert str(spool.path(0)) in str(err.value)


def test_integer_tensors_round_trip_as_tensors_in_their_dtype(tmp_path):
    """Bulk per-token data (router replay's [tokens, layers, top_k] expert indices) stays a compact tensor."""
    routed = torch.randint(0, 128, (5, 3, 8), dtype=torch.uint8)
    batch = _batch()
    batch["groups"][0]["rollouts"][0]["routed_experts"] = routed
    spool = RolloutSpool(tmp_path)
    spool.put(0, batch)
    got = spool.get(0, timeout=1)["groups"][0]["rollouts"][0]["routed_experts"]
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and torch.equal(got, routed)
