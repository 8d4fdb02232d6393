"""Mixture sampler hits trainable-token shares within ±1 pp over an epoch; packing keeps documents apart."""

from __future__ import annotations

import random

import numpy as np
import pytest

from north_lightning.datamodules.mixture import MixtureSampler, MixtureSpec
from north_lightning.datamodules.packing import BestFitPacker, DocTable, write_rows
from north_lightning.datamodules.shards import RowReader, ShardIndex
from north_lightning.model.head import IGNORE_INDEX


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampler_hits_shares_within_one_point(seed):
    rng = random.Random(seed)
    # very different pool sizes and document sizes (a chat source of short answers, agent sources of long ones)
    trainable = [[rng.randint(20, 200) for _ in range(900)], [rng.randint(200, 3000) for _ in range(40)],
                 [rng.randint(50, 800) for _ in range(300)], [rng.randint(500, 1500) for _ in range(12)]]
    shares = [0.3, 0.5, 0.15, 0.05]
    epoch_tokens = sum(map(sum, trainable))
    sampler = MixtureSampler(trainable, shares, seed)
    counts = [0] * 4
    while sum(sampler.tokens) < epoch_tokens:
        c, d = sampler.next()
        counts[c] += 1
    achieved = sampler.achieved_shares()
    assert max(abs(a - s) for a, s in zip(achieved, shares)) < 0.01
    assert counts[3] > 12  # the small pool was upsampled (cycled) to reach its share


def test_sampler_cycles_each_pool_in_seeded_permutations():
    sampler = MixtureSampler([[1] * 5], [1.0], seed=3)
    first = [sampler.next()[1] for _ in range(5)]
    second = [sampler.next()[1] for _ in range(5)]
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    again = MixtureSampler([[1] * 5], [1.0], seed=3)
    assert [again.next()[1] for _ in range(5)] == first


def test_spec_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("components:\n  - {name: a, paths: [x.jsonl], harness: swe-agent, share: 1}\n")
    with pytest.raises(ValueError, match=r"m\.yaml: components\[0\]: unknown harness 'swe-agent'"):
        MixtureSpec.load(bad)
    bad.write_text("components:\n  - {name: a, paths: [x.jsonl], harness: chat}\n")
    with pytest.raises(ValueError, match=r"components\[0\] is missing key 'share'"):
        MixtureSpec.load(bad)
    bad.write_text("components:\n  - {name: a, paths: [x.jsonl], harness: chat, share: -1}\n")
    with pytest.raises(ValueError, match="'share' must be a positive number"):
        MixtureSpec.load(bad)
    bad.write_text("components:\n  - {name: a, paths: [], harness: chat, share: 1}\n")
    with pytest.raises(ValueError, match="'paths' is empty"):
        MixtureSpec.load(bad)
    with pytest.raises(FileNotFoundError, match="mixture spec not found"):
        MixtureSpec.load(tmp_path / "none.yaml")
    spec = MixtureSpec.load({"components": [{"name": "a", "paths": "asset://sft_data/toy_chat_train.jsonl",
                                             "harness": "chat", "share": 3}, {"name": "b", "paths": ["x.jsonl"], "harness": "chat", "share": 1}]})
    assert spec.shares == [0.75, 0.25] and spec.components[0].paths[0].endswith("assets/sft_data/toy_chat_train.jsonl")


def test_packer_rows_fit_and_lose_nothing():
    rng = random.Random(0)
    packer = BestFitPacker(seq_len=1000, min_length=10, max_open=8)
    lengths = {i: rng.randint(10, 700) for i in range(2000)}
    rows = []
    for i, n in lengths.items():
        rows += packer.add(i, n)
    rows += packer.flush()
    items = [i for r in rows for i in r]
    assert sorted(items) == list(lengths)
    assert all(sum(lengths[i] for i in r) <= 1000 for r in rows)
    assert sum(lengths.values()) / (1000 * len(rows)) > 0.95
    with pytest.raises(ValueError, match="does not fit seq_len 1000"):
        packer.add("big", 1001)


def test_written_rows_follow_the_packed_batch_contract(tmp_path):
    # two documents in one chunk: ids 5..8 (learns 6, 7) and 9..11 (learns 10, 11); loss_mask[t]: t learns t+1
    np.save(tmp_path / "c.ids.npy", np.array([5, 6, 7, 8, 9, 10, 11], np.int32))
    np.save(tmp_path / "c.mask.npy", np.array([1, 1, 0, 0, 1, 1, 0], np.uint8))
    table = DocTable([np.array([0, 0])], [np.array([0, 4])], [np.array([4, 3])], [np.array([2, 2])])
    names, stats = write_rows([[(0, 0), (0, 1)], [(0, 1)]], table, [[str(tmp_path / "c")]], tmp_path, "k-train",
                              seq_len=10, pad_id=0, rows_per_shard=1, n_components=1)
    assert names == ["k-train-00000", "k-train-00001"] and stats.tolist() == [[4, 7], [2, 3]]
    index = ShardIndex(tmp_path, {"train_shards": names, "rows_per_shard": 1, "train_rows": 2}, stats, stats[:0])
    b = RowReader(index).batch([0, 1])
    assert b["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 10, 11, 0, 0, 0]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2]
    assert b["document_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert b["targets"][0].tolist() == [6, 7, -100, -100, 10, 11, -100, -100, -100, -100]
    assert b["document_ids"][1].tolist() == [0, 0, 0] + [1] * 7
    for row in range(2):  # no position is trained to predict a token of another document (or padding)
        ids, tgt, doc = b["input_ids"][row], b["targets"][row], b["document_ids"][row]
        for t in range(9):
            if tgt[t] != IGNORE_INDEX:
                assert doc[t] == doc[t + 1] and tgt[t] == ids[t + 1]
