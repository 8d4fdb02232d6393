"""NorthConfig: presets, HF config.json mapping (both ways, and against transformers' own config), bad input."""

from __future__ import annotations

import pytest

from north_lightning.model import NorthConfig
from north_lightning.model.config import FULL, SLIDING


def test_north_preset_shape_rules() -> None:
    cfg = NorthConfig.preset("north_mini_code_30b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (2048, 49, 32, 4)
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.expert_intermediate_size) == (128, 8, 768)
    assert (cfg.dense_intermediate_size, cfg.vocab_size, cfg.sliding_window, cfg.rope_theta) == (3072, 262144, 4096, 50000.0)
    assert [i for i, t in enumerate(cfg.layer_types) if t == FULL] == list(range(0, 49, 4))
    assert cfg.mlp_layer_types[0] == "dense" and set(cfg.mlp_layer_types[1:]) == {"sparse"}
    assert cfg.uses_rope(0) and not cfg.uses_rope(4) and cfg.uses_rope(1)
    assert cfg.attention_window(1) == 4096 and cfg.attention_window(0) is None
    assert cfg.replace(window_convention="transformers").attention_window(1) == 4095


@pytest.mark.parametrize("name", ["tiny", "north_mini_code_30b"])
def test_hf_dict_round_trip_and_transformers_agree(name: str) -> None:
    from transformers import Cohere2MoeConfig

    cfg = NorthConfig.preset(name, logit_scale=0.25)
    d = cfg.to_hf_dict()
    assert NorthConfig.from_hf_dict(d) == cfg
    hf = Cohere2MoeConfig(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    assert list(hf.layer_types) == list(cfg.layer_types)
    assert list(hf.mlp_layer_types) == list(cfg.mlp_layer_types)
    # transformers' own serialisation (with its extra generic keys) reads back to the same config
    assert NorthConfig.from_hf_dict(hf.to_dict()) == cfg


def test_first_k_dense_replace_derivation_matches_transformers() -> None:
    """A config.json without explicit layer lists (older exports) derives the same pattern as transformers."""
    from transformers import Cohere2MoeConfig

    d = NorthConfig.preset("north_mini_code_30b").to_hf_dict()
    del d["layer_types"], d["mlp_layer_types"]
    cfg = NorthConfig.from_hf_dict(d)
    hf = Cohere2MoeConfig(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    assert list(cfg.layer_types) == list(hf.layer_types)
    assert list(cfg.mlp_layer_types) == list(hf.mlp_layer_types)
    assert cfg.layer_types[0] == FULL and cfg.layer_types[1] == SLIDING


def test_unknown_field_and_wrong_type_name_the_key() -> None:
    with pytest.raises(TypeError, match="hidden_sizes"):
        NorthConfig(hidden_sizes=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="NorthConfig.hidden_size"):
        NorthConfig(hidden_size="256")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="NorthConfig.tie_word_embeddings"):
        NorthConfig(tie_word_embeddings=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window_convention"):
        NorthConfig(window_convention="hf")
    with pytest.raises(ValueError, match="unknown NorthConfig preset"):
        NorthConfig.preset("huge")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"model_type": "cohere2"}, "model_type 'cohere2' is not supported"),
        ({"hidden_size": None}, "missing required keys \\['hidden_size'\\]"),
        ({"some_new_knob": 3}, "unknown keys \\['some_new_knob'\\]"),
        ({"expert_selection_fn": "softmax"}, "expert_selection_fn"),
        ({"num_shared_experts": 1}, "num_shared_experts"),
        ({"rms_norm_eps": None}, "rms_norm_eps"),
        ({"layer_types": ["full_attention"]}, "layer_types: 1 entries"),
    ],
)
def test_bad_hf_config_names_the_key(edit: dict, message: str) -> None:
    d = NorthConfig.preset("tiny").to_hf_dict()
    for key, value in edit.items():
        if value is None:
            d.pop(key)
        else:
            d[key] = value
    with pytest.raises(ValueError, match=message):
        NorthConfig.from_hf_dict(d)


def test_several_eos_ids_round_trip() -> None:
    d = NorthConfig.preset("tiny").to_hf_dict()
    d["eos_token_id"] = [2, 7]
    cfg = NorthConfig.from_hf_dict(d)
    assert cfg.eos_token_id == (2, 7) and cfg.to_hf_dict()["eos_token_id"] == [2, 7]
    with pytest.raises(TypeError, match="eos_token_id"):
        NorthConfig(eos_token_id=["2"])  # type: ignore[list-item]


def test_north_preset_builds_on_meta_with_30b_total_3b_active_parameters() -> None:
    import torch

    from north_lightning.model import NorthForCausalLM

    with torch.device("meta"):
        model = NorthForCausalLM(NorthConfig.preset("north_mini_code_30b"))
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    active = total - experts + experts * 8 // 128
    assert 30.0e9 < total < 31.0e9 and 3.0e9 < active < 3.6e9
