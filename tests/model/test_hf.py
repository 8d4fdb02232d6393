"""HF checkpoint interop: transformers' own checkpoint -> ours -> transformers, sharding, tokenizer copy, and
errors for bad checkpoints (never a silent random init)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.model.hf import INDEX_NAME, read_safetensors_dir


def test_save_load_round_trip_sharded_and_transformers_loads_ours(hf_checkpoint, hf_model, tmp_path: Path) -> None:
    from transformers import Cohere2MoeForCausalLM

    ours = NorthForCausalLM.from_pretrained(hf_checkpoint).eval()
    out = tmp_path / "export"
    ours.save_pretrained(out, max_shard_bytes=1_000_000)
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    names = set(index["weight_map"])
    assert "model.layers.1.mlp.experts.15.down_proj.weight" in names and "model.layers.1.mlp.gate.weight" in names
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    # the exported tensors are exactly the ones transformers wrote
    exported, written_by_hf = read_safetensors_dir(out), read_safetensors_dir(hf_checkpoint)
    assert set(exported) == set(written_by_hf)
    for name, tensor in written_by_hf.items():
        assert torch.equal(exported[name], tensor), name

    again = NorthForCausalLM.from_pretrained(out).eval()
    for (name, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    reloaded_hf = Cohere2MoeForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(3, 512, (1, 12))
    with torch.no_grad():
        assert torch.equal(reloaded_hf(ids).logits, hf_model(ids).logits)


def test_fused_v5_expert_layout_loads(hf_checkpoint, tmp_path: Path) -> None:
    ours = NorthForCausalLM.from_pretrained(hf_checkpoint)
    fused = tmp_path / "fused"
    fused.mkdir()
    shutil.copy(hf_checkpoint / "config.json", fused / "config.json")
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(fused / "model.safetensors"))
    assert "model.layers.1.mlp.experts.gate_up_proj" in load_file(str(fused / "model.safetensors"))
    again = NorthForCausalLM.from_pretrained(fused)
    for (name, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_tokenizer_files_are_copied(tmp_path: Path) -> None:
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    (tok_dir / "tokenizer_config.json").write_text("{}")
    NorthForCausalLM(NorthConfig.preset("tiny", num_hidden_layers=2)).save_pretrained(tmp_path / "m", tokenizer_dir=tok_dir)
    assert (tmp_path / "m" / "tokenizer.json").exists() and (tmp_path / "m" / "tokenizer_config.json").exists()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        NorthForCausalLM(NorthConfig.preset("tiny", num_hidden_layers=2)).save_pretrained(tmp_path / "n", tokenizer_dir=tmp_path)


def _copy_with(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    shard = next(dst.glob("*.safetensors"))
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard))
    return dst


def test_missing_unexpected_and_misshaped_tensors_are_listed(hf_checkpoint, tmp_path: Path) -> None:
    def drop(t):
        del t["model.layers.2.self_attn.k_proj.weight"]

    def add(t):
        t["model.layers.2.self_attn.q_norm.weight"] = torch.ones(4)

    def reshape(t):
        t["model.norm.weight"] = torch.ones(7)

    def drop_expert(t):
        del t["model.layers.3.mlp.experts.5.up_proj.weight"]

    cases = [(drop, r"missing=\['model.layers.2.self_attn.k_proj.weight'\]"),
             (add, r"unexpected=\['model.layers.2.self_attn.q_norm.weight'\]"),
             (reshape, r"mis_shaped=\['model.norm.weight \(7,\) != \(256,\)'\]"),
             (drop_expert, r"model.layers.3.mlp.experts.5.up_proj.weight")]
    for i, (edit, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            NorthForCausalLM.from_pretrained(_copy_with(hf_checkpoint, tmp_path / str(i), edit))


def test_unsupported_model_type_and_missing_files(hf_checkpoint, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(hf_checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config.json: .*model_type 'llama' is not supported"):
        NorthForCausalLM.from_pretrained(bad)
    with pytest.raises(FileNotFoundError, match="config.json"):
        NorthForCausalLM.from_pretrained(tmp_path)
    (bad / "config.json").write_text(json.dumps(config))
    for f in bad.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        NorthForCausalLM.from_pretrained(bad)
