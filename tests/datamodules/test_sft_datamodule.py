"""SFTDataModule on the bundled tiny mixtures: packed-batch contract, exact resume, ranks, cascade refusal,
validation split, and the `data report` CLI."""

from __future__ import annotations

import pytest
import torch

from north_lightning.cli.data import main as data_main
from north_lightning.datamodules.sft import SFTDataModule

STAGE1 = "configs/tiny/mixtures/sft_stage1.yaml"


@pytest.fixture(scope="module")
def dm():
    module = SFTDataModule(STAGE1, seq_len=2048, batch_size=2, seed=5, max_records_per_component=12, max_open_rows=16)
    module.setup("fit")
    return module


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


def test_exact_resume_and_ranks(dm):
    fresh = dm.stream()
    expected = [fresh.batch(k) for k in range(6)]
    resumed = dm.stream(start_batch=4)
    it = iter(resumed)
    for k in (4, 5):
        got = next(it)
        assert all(torch.equal(got[key], expected[k][key]) for key in expected[k])
    state = dm.state_dict() | {"consumed_batches": 4}
    other = SFTDataModule(STAGE1, seq_len=2048, batch_size=2, seed=5, max_records_per_component=12, max_open_rows=16)
    other.setup("fit")
    other.load_state_dict(state)
    first = next(iter(other.train_dataloader()))
    assert torch.equal(first["input_ids"], expected[4]["input_ids"])
    with pytest.raises(ValueError, match="data changed"):
        dm.load_state_dict(state | {"pool_sizes": [1, 2, 3]})
    with pytest.raises(ValueError, match="seed"):
        dm.load_state_dict(state | {"seed": 99})
    # rank r of W reads global batches r, r+W, ...
    r0, r1 = dm.stream(rank=0, world_size=2), dm.stream(rank=1, world_size=2)
    assert torch.equal(r0.batch(1)["input_ids"], expected[2]["input_ids"])
    assert torch.equal(r1.batch(1)["input_ids"], expected[3]["input_ids"])


def test_stage_two_refuses_without_stage_one_weights(tmp_path):
    missing = tmp_path / "stage1" / "hf"
    with pytest.raises(FileNotFoundError, match="allow_missing_init"):
        SFTDataModule(STAGE1, init_from=str(missing), max_records_per_component=2)
    SFTDataModule(STAGE1, init_from=str(missing), allow_missing_init=True, max_records_per_component=2).prepare_data()
    missing.mkdir(parents=True)
    (missing / "model.safetensors").write_bytes(b"")
    SFTDataModule(STAGE1, init_from=str(missing), max_records_per_component=2).prepare_data()


def test_validation_split_is_disjoint():
    module = SFTDataModule(STAGE1, seq_len=2048, val_fraction=0.3, max_records_per_component=10, max_open_rows=8)
    module.setup("fit")
    train_ids = {d.record_id for p in module.pools.train for d in p}
    val_ids = {d.record_id for p in module.pools.val for d in p}
    assert val_ids and not train_ids & val_ids
    assert len(module.val_dataloader()) == module.val_batches


def test_data_report_cli(capsys, tmp_path):
    out = tmp_path / "r.json"
    assert data_main(["report", "--config", "configs/tiny/sft_stage2.yaml", "--max-records", "12", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("packing_efficiency=") and "mixture_max_error_pp=" in lines[-1]
    assert any(line.startswith("swe_agent") for line in lines) and any("dropped by filters" in line for line in lines)
    with pytest.raises(SystemExit):
        data_main(["report"])


def test_render_variants_are_distinct_documents():
    module = SFTDataModule("configs/tiny/mixtures/sft_stage2.yaml", max_records_per_component=4, render_variants=3)
    module.setup("fit")
    pool = module.pools.train[0]  # SWE-agent: paraphrased prompts and shuffled tool schemas
    assert len(pool) == 12 and len({d.input_ids.tobytes() for d in pool}) == 12
    assert len({d.record_id for d in pool}) == 4
    with pytest.raises(ValueError, match="render_variants"):
        SFTDataModule(STAGE1, render_variants=0)


def test_filter_report_written_at_setup(tmp_path):
    import json

    out = tmp_path / "report.json"
    module = SFTDataModule(STAGE1, max_records_per_component=2, report_path=str(out))
    module.setup("fit")
    report = json.loads(out.read_text())
    assert report["kept"]["code_single_turn"] == 2 and report["bad_records"] == {}
    assert set(report) >= {"dropped_total", "dropped_by_component", "bad_record_examples"}
