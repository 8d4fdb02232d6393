"""`data prepare` shards: reuse, resume after a kill, refusal of foreign shards, streaming by rank × worker,
mixture shares per 1,000-row window, the rows' tokens against the one-conversation tokenisation, `data inspect`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from north_lightning.cli.data import inspect_row, mixture_errors
from north_lightning.datamodules.prepare import PrepareConfig, prepare
from north_lightning.datamodules.prepare_config import load_tokenizer, stable_seed
from north_lightning.datamodules.sft import SFTDataModule
from north_lightning.datamodules.shards import ShardIndex, ShardMismatch
from north_lightning.datamodules.tokenize import chat_tokens
from north_lightning.formats.harnesses import get_harness
from north_lightning.formats.records import iter_records

REPO = Path(__file__).resolve().parents[2]
STAGE1 = str(REPO / "configs/tiny/mixtures/sft_stage1.yaml")
BUNDLED = REPO / "north_lightning/assets/sft_data"


def _small_mixture(tmp_path: Path, chat_only: bool = False) -> str:
    """A small mixture over copies of bundled shards (so a test may change an input file)."""
    for name in ("toy_terminal_train.jsonl", "toy_chat_train.jsonl"):
        shutil.copy(BUNDLED / name, tmp_path / name)
    chat = str(tmp_path / "toy_chat_train.jsonl")
    spec = {"name": "small", "components": [
        {"name": "swe", "paths": [str(tmp_path / "toy_terminal_train.jsonl")], "harness": "swe_agent", "share": 0.6,
         "harness_args": {"workdir": "/app"}},
        {"name": "code", "paths": [chat], "harness": "chat", "share": 0.4, "source": "toy_code"}]}
    if chat_only:
        spec["components"] = [
            {"name": "code", "paths": [chat], "harness": "chat", "share": 0.5, "source": "toy_code"},
            {"name": "reasoning", "paths": [chat], "harness": "chat", "share": 0.3, "source": "toy_reasoning"},
            {"name": "instruction", "paths": [chat], "harness": "chat", "share": 0.2, "source": "toy_instruction"}]
    path = tmp_path / "mixture.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_unchanged_config_reuses_and_any_change_makes_new_shards(tmp_path):
    mixture = _small_mixture(tmp_path)
    cfg = PrepareConfig(mixture, seq_len=2048, max_records_per_component=6, out_dir=str(tmp_path / "p"))
    first = prepare(cfg)
    assert first.name.startswith("small-") and len(first.name) == len("small-") + 16
    assert all(name.startswith(first.name[-16:]) for name in ShardIndex.load(first).meta["train_shards"])
    stamp = (first / "index.json").stat().st_mtime_ns
    assert prepare(cfg) == first and prepare.last_counts == {"reused": True}
    assert (first / "index.json").stat().st_mtime_ns == stamp
    changed = prepare(PrepareConfig(mixture, seq_len=1536, max_records_per_component=6, out_dir=str(tmp_path / "p")))
    assert changed != first


def test_foreign_shards_are_refused_naming_what_differs(tmp_path):
    mixture = _small_mixture(tmp_path)
    out = str(tmp_path / "p")
    dm = SFTDataModule(mixture, seq_len=2048, max_records_per_component=4, data_dir=out)
    dm.prepare_data()
    shards = str(dm.locate().path)
    with pytest.raises(ShardMismatch, match="setting seq_len: 2048 -> 1536"):
        SFTDataModule(mixture, seq_len=1536, max_records_per_component=4, data_dir=out, prepared=shards).setup()
    with pytest.raises(ShardMismatch, match="tokenizer or chat template"):
        SFTDataModule(mixture, seq_len=2048, max_records_per_component=4, data_dir=out, prepared=shards,
                      chat_template="north").setup()
    with (tmp_path / "toy_chat_train.jsonl").open("a") as f:  # the corpus changed after prepare
        f.write((BUNDLED / "toy_chat_train.jsonl").read_text().splitlines()[0].replace('"id": "', '"id": "new-') + "\n")
    with pytest.raises(ShardMismatch, match=r"input file .*toy_chat_train.jsonl changed"):
        SFTDataModule(mixture, seq_len=2048, max_records_per_component=4, data_dir=out).setup()
    with pytest.raises(ShardMismatch, match=r"input file .*toy_chat_train.jsonl changed"):
        SFTDataModule(mixture, seq_len=2048, max_records_per_component=4, data_dir=out, prepared=shards).setup()
    index = Path(shards) / "index.json"
    index.write_text(index.read_text().replace('"format_version": 1', '"format_version": 0', 1))
    with pytest.raises(ShardMismatch, match="format version 0"):
        SFTDataModule(mixture, seq_len=2048, max_records_per_component=4, data_dir=out, prepared=shards).setup()


def _arrays(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.npy"))}


@pytest.mark.slow
def test_killed_prepare_resumes_to_the_same_shards(tmp_path):
    mixture = _small_mixture(tmp_path)
    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "north_lightning.datamodules.sft.SFTDataModule", "init_args": {
        "mixture": mixture, "seq_len": 2048, "max_records_per_component": 40, "chunk_records": 2,
        "data_dir": str(tmp_path / "killed")}}}))
    proc = subprocess.Popen([sys.executable, "-m", "north_lightning", "data", "prepare", "--config", str(config)],
                            cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list((tmp_path / "killed").rglob("docs/*/*.json"))) < 3:
        assert proc.poll() is None, "prepare finished before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (shard_dir,) = (tmp_path / "killed").glob("small-*")
    assert not (shard_dir / "index.json").exists()
    done = len(list(shard_dir.rglob("docs/*/*.json")))
    cfg = PrepareConfig(mixture, seq_len=2048, max_records_per_component=40, chunk_records=2, out_dir=str(tmp_path / "killed"))
    assert prepare(cfg) == shard_dir
    assert prepare.last_counts["reused_chunks"] == done and prepare.last_counts["new_chunks"] == 40 - done
    clean = prepare(PrepareConfig(mixture, seq_len=2048, max_records_per_component=40, chunk_records=2,
                                  out_dir=str(tmp_path / "clean")))
    assert clean.name == shard_dir.name and _arrays(clean) == _arrays(shard_dir)


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    dm = SFTDataModule(STAGE1, seq_len=2048, batch_size=2, max_records_per_component=20, max_open_rows=16,
                       data_dir=str(tmp_path_factory.mktemp("p")), epochs=2.0, rows_per_shard=16)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_dataloader_workers_and_ranks_stream_exact_batches(stage):
    assert len(stage.index.meta["train_shards"]) > 1  # batches cross shard files
    stream = stage.stream()
    expected = [stream.batch(k) for k in range(3, 9)]
    loader = DataLoader(stage.stream(start_batch=3), batch_size=None, num_workers=2)
    for want, got in zip(expected, loader):
        assert all(torch.equal(got[key], want[key]) for key in want)
    r1 = stage.stream(rank=1, world_size=3)
    assert torch.equal(r1.batch(2)["input_ids"], stream.batch(7)["input_ids"])  # global batch 2*3+1
    n = stage.index.rows()
    last = stream.batch(n)  # past the last row the rows repeat in the same order
    assert torch.equal(last["input_ids"][0], stream.batch(0)["input_ids"][0])


def test_rows_hold_the_one_conversation_tokenisation(stage):
    """Documents in the shards equal `apply_chat_template` on the harness rendering (not the batched path)."""
    tok = load_tokenizer(stage.config)
    comp = stage.spec.components[0]
    harness = get_harness(comp.harness, **dict(comp.harness_args))
    chunk = sorted((stage.index.path / "docs" / "000").glob("*.json"))[0]
    meta = json.loads(chunk.read_text())
    ids = np.load(str(chunk)[:-5] + ".ids.npy")
    mask = np.load(str(chunk)[:-5] + ".mask.npy")
    records = {r.id: r for r, _ in iter_records(list(comp.paths))}
    for d, rid in enumerate(meta["record_ids"][:5]):
        record = records[rid]
        seed = stable_seed(stage.seed, comp.name, rid, 0)
        want_ids, want_mask = chat_tokens(tok, harness.render(record, seed=seed), record.tools or harness.tools_for(seed))
        a, b = meta["offsets"][d], meta["offsets"][d + 1]
        assert np.array_equal(ids[a:b], want_ids) and np.array_equal(mask[a:b - 1], want_mask[1:]) and mask[b - 1] == 0
    # every document of a packed row is one of the prepared documents, whole
    all_docs = set()
    for c in sorted((stage.index.path / "docs").glob("*/*.json")):
        m = json.loads(c.read_text())
        arr = np.load(str(c)[:-5] + ".ids.npy")
        all_docs |= {arr[a:b].tobytes() for a, b in zip(m["offsets"], m["offsets"][1:])}
    batch = stage.stream().batch(0)
    for b in range(2):
        row, docs = batch["input_ids"][b].numpy().astype(np.int32), batch["document_ids"][b].numpy()
        for j in range(int(docs.max())):
            assert row[docs == j].tobytes() in all_docs


def test_mixture_shares_hold_in_every_window_of_1000_rows(tmp_path):
    mixture = _small_mixture(tmp_path, chat_only=True)
    out = prepare(PrepareConfig(mixture, seq_len=512, max_records_per_component=60, epochs=200.0, max_open_rows=32,
                                out_dir=str(tmp_path / "p")))
    index = ShardIndex.load(out)
    assert index.rows() >= 2500
    overall, window = mixture_errors(index.row_stats, [0.5, 0.3, 0.2], 1000)
    assert overall < 0.2 and window <= 1.0, (overall, window)


def test_inspect_shows_mask_and_document_boundaries(stage, capsys):
    from north_lightning.cli.data import main

    assert main(["inspect", str(stage.index.path), "--row", "1"]) == 0
    text = capsys.readouterr().out
    assert "── document 0 (" in text and "── document 1 (" in text
    heads = [line for line in text.splitlines() if line.startswith("── document")]
    names = {c.name for c in stage.spec.components}
    assert all(line.split("(")[1].split(" / ")[0] in names for line in heads)  # component / record id
    batch = stage.stream().batch(0)  # row 1 is the second row of batch 0
    tok = load_tokenizer(stage.config)
    trained = tok.decode([int(t) for t in batch["targets"][1] if t != -100], skip_special_tokens=False)
    assert "".join(part.split("⟧")[0] for part in text.split("⟦")[1:]) == trained
    with pytest.raises(IndexError, match="out of range"):
        inspect_row(str(stage.index.path), stage.index.rows())


def test_several_processes_write_the_same_shards(tmp_path):
    mixture = _small_mixture(tmp_path)
    one = prepare(PrepareConfig(mixture, seq_len=2048, max_records_per_component=12, chunk_records=4,
                                out_dir=str(tmp_path / "one")))
    two = prepare(PrepareConfig(mixture, seq_len=2048, max_records_per_component=12, chunk_records=4,
                                out_dir=str(tmp_path / "two"), num_proc=2))
    assert prepare.last_counts["new_chunks"] == 6
    assert one.name == two.name and _arrays(one) == _arrays(two)
