"""SFTDataModule on the bundled tiny mixtures (prepared into shards, then streamed): packed-batch contract,
exact resume, ranks, cascade refusal, validation split, and the `data report` CLI."""

from __future__ import annotations

import pytest
import torch

from north_lightning.cli.data import main as data_main
from north_lightning.datamodules.sft import SFTDataModule

STAGE1 = "configs/tiny/mixtures/sft_stage1.yaml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("prepared"))


def make(data_dir: str, mixture: str = STAGE1, **kw) -> SFTDataModule:
    module = SFTDataModule(mixture, data_dir=data_dir, **kw)
    module.prepare_data()
    module.setup("fit")
    return module


@pytest.fixture(scope="module")
def dm(data_dir):
    return make(data_dir, seq_len=2048, batch_size=2, seed=5, max_records_per_component=12, max_open_rows=16)


def test_batches_follow_the_packed_contract(dm):
    batch = dm.stream().batch(0)
    ids, pos, doc, tgt = batch["input_ids"], batch["position_ids"], batch["document_ids"], batch["targets"]
    assert ids.shape == pos.shape == doc.shape == tgt.shape == (2, 2048) and ids.dtype == torch.long
    assert int(batch["window_trainable_tokens"]) == int((tgt != -100).sum())
    for b in range(2):
        starts = [0] + [t for t in range(1, 2048) if doc[b, t] != doc[b, t - 1]]
        assert all(pos[b, t] == 0 for t in starts)
        for t in range(2047):
            if tgt[b, t] != -100:
                assert doc[b, t] == doc[b, t + 1] and tgt[b, t] == ids[b, t + 1]
    assert (ids != dm.pad_id).float().mean() > 0.9


def test_exact_resume_and_ranks(dm, data_dir):
    fresh = dm.stream()
    expected = [fresh.batch(k) for k in range(6)]
    resumed = dm.stream(start_batch=4)
    it = iter(resumed)
    for k in (4, 5):
        got = next(it)
        assert all(torch.equal(got[key], expected[k][key]) for key in expected[k])
    state = dm.state_dict() | {"consumed_batches": 4}
    other = SFTDataModule(STAGE1, seq_len=2048, batch_size=2, seed=5, max_records_per_component=12, max_open_rows=16,
                          data_dir=data_dir)
    other.setup("fit")  # the shards exist: setup reads their index only
    other.load_state_dict(state)
    first = next(iter(other.train_dataloader()))
    assert torch.equal(first["input_ids"], expected[4]["input_ids"])
    with pytest.raises(ValueError, match="data changed"):
        dm.load_state_dict(state | {"shards": "0" * 64})
    with pytest.raises(ValueError, match="seed"):
        dm.load_state_dict(state | {"seed": 99})
    # rank r of W reads global batches r, r+W, ...
    r0, r1 = dm.stream(rank=0, world_size=2), dm.stream(rank=1, world_size=2)
    assert torch.equal(r0.batch(1)["input_ids"], expected[2]["input_ids"])
    assert torch.equal(r1.batch(1)["input_ids"], expected[3]["input_ids"])


def test_stage_two_refuses_without_stage_one_weights(tmp_path, data_dir):
    missing = tmp_path / "stage1" / "hf"
    with pytest.raises(FileNotFoundError, match="allow_missing_init"):
        SFTDataModule(STAGE1, init_from=str(missing), max_records_per_component=2, data_dir=data_dir)
    SFTDataModule(STAGE1, init_from=str(missing), allow_missing_init=True, max_records_per_component=2,
                  data_dir=data_dir).prepare_data()
    missing.mkdir(parents=True)
    (missing / "model.safetensors").write_bytes(b"")
    SFTDataModule(STAGE1, init_from=str(missing), max_records_per_component=2, data_dir=data_dir).prepare_data()


def test_validation_split_is_disjoint(data_dir):
    import json

    module = make(data_dir, seq_len=2048, val_fraction=0.3, max_records_per_component=10, max_open_rows=8)
    meta = module.index.meta
    assert sum(c["val_documents"] for c in meta["components"]) > 0 and module.index.rows("val") > 0
    train_ids, val_ids = set(), set()
    for chunk in (module.index.path / "docs").rglob("*.json"):
        got = json.loads(chunk.read_text())
        for rid, is_val in zip(got["record_ids"], got["val"]):
            (val_ids if is_val else train_ids).add(rid)
    assert val_ids and not train_ids & val_ids
    assert len(module.val_dataloader()) == module.val_batches


def test_data_report_cli(capsys, tmp_path):
    out = tmp_path / "r.json"
    assert data_main(["report", "--config", "configs/tiny/sft_stage2.yaml", "--max-records", "12", "--json", str(out),
                      "--data-dir", str(tmp_path / "prepared")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("packing_efficiency=") and "mixture_max_error_pp=" in lines[-1]
    assert any(line.startswith("swe_agent") for line in lines) and any("dropped by filters" in line for line in lines)
    with pytest.raises(SystemExit):
        data_main(["report"])


def test_render_variants_are_distinct_documents(data_dir):
    import json

    import numpy as np

    module = make(data_dir, "configs/tiny/mixtures/sft_stage2.yaml", max_records_per_component=4, render_variants=3)
    assert module.index.meta["components"][0]["documents"] == 12  # SWE-agent: paraphrased prompts, shuffled tools
    (chunk,) = sorted((module.index.path / "docs" / "000").glob("*.json"))
    meta = json.loads(chunk.read_text())
    ids = np.load(str(chunk)[: -len(".json")] + ".ids.npy")
    docs = {ids[a:b].tobytes() for a, b in zip(meta["offsets"], meta["offsets"][1:])}
    assert len(docs) == 12 and len(set(meta["record_ids"])) == 4
    with pytest.raises(ValueError, match="render_variants"):
        SFTDataModule(STAGE1, render_variants=0)


def test_filter_report_written_at_setup(tmp_path, data_dir):
    import json

    out = tmp_path / "report.json"
    make(data_dir, max_records_per_component=2, report_path=str(out))
    report = json.loads(out.read_text())
    assert report["kept"]["code_single_turn"] == 2 and report["bad_records"] == {}
    assert set(report) >= {"dropped_total", "dropped_by_component", "bad_record_examples"}
