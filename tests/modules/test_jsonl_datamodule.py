"""JSONL chat datamodule: packed-batch contract, malformed rows, determinism and resumable position."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from north_lightning.assets import ASSETS_DIR
from north_lightning.datamodules.jsonl import IGNORE_INDEX, JsonlChatDataModule, PackedChatStream

DEMO = ASSETS_DIR / "demo_chat.jsonl"


def _row(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


@pytest.fixture(scope="module")
def dm() -> JsonlChatDataModule:
    dm = JsonlChatDataModule(str(DEMO), seq_len=700, batch_size=3, seed=1)
    dm.setup("fit")
    return dm


def _stream(dm: JsonlChatDataModule, **kw) -> PackedChatStream:
    return PackedChatStream(dm.train_docs, dm.seq_len, dm.batch_size, dm.seed, dm.pad_id, **kw)


def test_packed_batch_contract(dm: JsonlChatDataModule) -> None:
    batch = _stream(dm).batch(0)
    ids, pos, docs, tgt = batch["input_ids"], batch["position_ids"], batch["document_ids"], batch["targets"]
    assert ids.shape == pos.shape == docs.shape == tgt.shape == (3, 700)
    assert all(t.dtype == torch.long for t in (ids, pos, docs, tgt))
    end_of_turn = dm.tokenizer.eos_token_id
    for b in range(3):
        starts = torch.nonzero(pos[b] == 0).flatten().tolist()
        assert starts[0] == 0 and len(starts) >= 2  # several documents packed (700 > 2 demo conversations)
        bos = dm.tokenizer.bos_token_id
        real_starts = [s for s in starts if ids[b, s] == bos]
        for s in real_starts:
            assert s == 0 or docs[b, s] == docs[b, s - 1] + 1  # a new document id at each document start
            if s > 0:
                assert tgt[b, s - 1] == IGNORE_INDEX  # never predict a document's first token from the previous
        for t in range(699):
            if tgt[b, t] != IGNORE_INDEX:
                assert docs[b, t] == docs[b, t + 1] and tgt[b, t] == ids[b, t + 1]
        # Each trained span ends by predicting the end-of-turn token.
        trained = tgt[b][tgt[b] != IGNORE_INDEX]
        assert trained[-1] == end_of_turn
        pad = ids[b] == dm.pad_id
        if pad.any():
            assert (tgt[b][pad] == IGNORE_INDEX).all()
            assert docs[b][pad].unique().numel() == 1 and docs[b][pad][0] == docs[b][~pad].max() + 1
    assert batch["window_trainable_tokens"] == (tgt != IGNORE_INDEX).sum()


def test_targets_are_exactly_the_assistant_tokens(dm: JsonlChatDataModule) -> None:
    """Decoding the trainable targets of one document gives exactly the assistant turns."""
    doc = dm.train_docs[0]
    text = dm.tokenizer.decode([t for t in doc.targets.tolist() if t != IGNORE_INDEX])
    assert text.startswith("I will write it with one command.<|START_ACTION|>")
    assert text.count("<|END_OF_TURN_TOKEN|>") == 3 and text.endswith(".<|END_OF_TURN_TOKEN|>")
    assert "Solve the task" not in text and "<|CHATBOT_TOKEN|>" not in text


def test_stream_is_deterministic_and_resumable(dm: JsonlChatDataModule) -> None:
    first = [_stream(dm).batch(k) for k in range(5)]
    again = iter(_stream(dm, start_batch=3))
    for k in (3, 4):
        b = next(again)
        assert int(b["batch_index"]) == k and torch.equal(b["input_ids"], first[k]["input_ids"])
    other_seed = PackedChatStream(dm.train_docs, 700, 3, 2, dm.pad_id).batch(0)
    assert not torch.equal(other_seed["input_ids"], first[0]["input_ids"])
    # Data-parallel ranks read disjoint batches that interleave the single-rank stream.
    r1 = _stream(dm, rank=1, world_size=2).batch(1)
    assert torch.equal(r1["input_ids"], first[3]["input_ids"])


def test_stream_crosses_epochs_with_a_new_order(dm: JsonlChatDataModule) -> None:
    stream = _stream(dm)
    rows_epoch0 = len(stream._plan_epoch(0))
    assert sorted(d for row in stream._plan_epoch(0) for d in row) == list(range(len(dm.train_docs)))
    assert stream._plan_epoch(1) != stream._plan_epoch(0)
    # The first row of epoch 1 is the row right after the last of epoch 0.
    assert stream._row_docs(rows_epoch0) == stream._plan_epoch(1)[0]


def test_accumulation_window_token_count(dm: JsonlChatDataModule) -> None:
    stream = _stream(dm, accumulate=2)
    b0, b1 = stream.batch(0), stream.batch(1)
    total = int((b0["targets"] != IGNORE_INDEX).sum() + (b1["targets"] != IGNORE_INDEX).sum())
    assert int(b0["window_trainable_tokens"]) == int(b1["window_trainable_tokens"]) == total


def test_state_dict_round_trip_and_mismatch(dm: JsonlChatDataModule, tmp_path: Path) -> None:
    state = {"consumed_batches": 7, "seed": 1, "num_documents": len(dm.train_docs)}
    other = JsonlChatDataModule(str(DEMO), seq_len=700, batch_size=3, seed=1)
    other.setup("fit")
    other.load_state_dict(state)
    assert other.consumed_batches == 7
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict({**state, "seed": 5})
    with pytest.raises(ValueError, match="documents"):
        other.load_state_dict({**state, "num_documents": 3})


def test_malformed_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(_row("hi", "hello") + "\n\n" + '{"messages": "oops"}\n' + _row("a", "b") + "\n{not json\n")
    dm = JsonlChatDataModule(str(path), seq_len=128, batch_size=1)
    with pytest.raises(ValueError, match=rf"{path}:3: malformed chat row"):
        dm.setup("fit")
    skipping = JsonlChatDataModule(str(path), seq_len=128, batch_size=1, skip_malformed=True)
    skipping.setup("fit")
    assert len(skipping.train_docs) == 2
    assert skipping.dropped == {"malformed: ValueError": 1, "malformed: JSONDecodeError": 1}


def test_bad_role_and_no_trainable_tokens(tmp_path: Path) -> None:
    path = tmp_path / "roles.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "narrator", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match=r"roles.jsonl:1: .*unsupported chat role: narrator"):
        JsonlChatDataModule(str(path), seq_len=64, batch_size=1).setup("fit")
    only_user = tmp_path / "user.jsonl"
    only_user.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match="no trainable conversations.*no trainable tokens"):
        JsonlChatDataModule(str(only_user), seq_len=64, batch_size=1).setup("fit")


def test_long_conversation_is_truncated_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text(_row("hi", "word " * 200) + "\n" + _row("a", "b") + "\n")
    dm = JsonlChatDataModule(str(path), seq_len=64, batch_size=1)
    dm.setup("fit")
    assert dm.dropped == {"truncated to seq_len (kept)": 1}
    assert max(len(d.input_ids) for d in dm.train_docs) == 64
