"""`NorthConfig`: the one description of a North (Cohere2MoE) model, its presets, and the HF `config.json` mapping.

Why a dataclass of our own rather than transformers' `Cohere2MoeConfig`: training-only knobs (attention and
experts backends, the window convention, the router aux-loss coefficient) live next to the architecture, every
field is type-checked at construction (a wrong YAML value fails with the key named), and HF's dozens of generic
keys do not leak into our code. `from_hf_dict` / `to_hf_dict` are the only places that know HF's key names.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"
DENSE = "dense"
SPARSE = "sparse"

# HF config.json keys that carry no architecture information for us (generation defaults, bookkeeping).
_HF_IGNORED_KEYS = frozenset({
    "architectures", "transformers_version", "torch_dtype", "dtype", "use_cache", "output_router_logits",
    "hidden_act", "attention_dropout", "_name_or_path", "return_dict", "output_hidden_states",
    "output_attentions", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params",
    "model_max_length", "sliding_window_pattern", "rope_scaling", "layer_norm_eps", "router_aux_loss_coef",
    "shared_expert_combination_strategy", "max_window_layers", "use_sliding_window", "cache_implementation",
})


@dataclass
class NorthConfig:
    """Architecture + backend choices of a North model. Defaults are the `tiny` preset's rules; see `preset()`."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    num_experts: int = 16
    num_experts_per_tok: int = 4
    expert_intermediate_size: int = 64  # F of every routed expert (HF: intermediate_size)
    dense_intermediate_size: int = 512  # F of the dense prefix MLP (HF: prefix_dense_intermediate_size)
    first_k_dense: int = 1  # layers [0, first_k_dense) use a dense MLP and full attention with RoPE
    global_every: int = 4  # layer i >= first_k_dense is global (full attention, NoPE) iff i % global_every == 0
    sliding_window: int = 64
    rope_theta: float = 50000.0
    rms_norm_eps: float = 1e-6
    logit_scale: float = 1.0
    tie_word_embeddings: bool = True
    norm_topk_prob: bool = False  # North: sigmoid weights of the top-k logits, not renormalised
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2  # several stop ids allowed, as in HF
    # Explicit per-layer patterns (HF `layer_types` / `mlp_layer_types`); derived from the rules above when None.
    layer_types: tuple[str, ...] | None = None
    mlp_layer_types: tuple[str, ...] | None = None
    # Training-side choices (not part of the checkpoint architecture).
    attn_backend: str = "sdpa"
    experts_backend: str = "torch"
    window_convention: str = "vllm"  # "vllm": a token sees itself + W previous; "transformers": one fewer
    router_aux_loss_coef: float = 1e-3
    head_chunk_size: int = 1024  # tokens per chunk of the output head (logprobs / loss never see full logits)
    # SFT loss of the output head: "chunked" (ours, fp32, runs anywhere) or "liger" (Liger-Kernel's fused linear
    # cross-entropy, CUDA). RL log-probabilities and entropies always use the chunked head (see model/head.py).
    loss_impl: str = "chunked"

    def __post_init__(self) -> None:
        _check_types(self)
        if self.layer_types is None:
            self.layer_types = tuple(
                FULL if i < self.first_k_dense or i % self.global_every == 0 else SLIDING
                for i in range(self.num_hidden_layers)
            )
        if self.mlp_layer_types is None:
            self.mlp_layer_types = tuple(DENSE if i < self.first_k_dense else SPARSE for i in range(self.num_hidden_layers))
        self.layer_types, self.mlp_layer_types = tuple(self.layer_types), tuple(self.mlp_layer_types)
        if isinstance(self.eos_token_id, list):
            self.eos_token_id = tuple(self.eos_token_id)
        for key, values, allowed in (("layer_types", self.layer_types, (SLIDING, FULL)),
                                     ("mlp_layer_types", self.mlp_layer_types, (DENSE, SPARSE))):
            if len(values) != self.num_hidden_layers:
                raise ValueError(f"NorthConfig.{key}: {len(values)} entries for {self.num_hidden_layers} layers")
            bad = sorted(set(values) - set(allowed))
            if bad:
                raise ValueError(f"NorthConfig.{key}: unknown entries {bad}; allowed {list(allowed)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("NorthConfig.num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("NorthConfig.head_dim must be even (interleaved RoPE rotates pairs)")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError("NorthConfig.num_experts_per_tok must be in [1, num_experts]")
        if self.window_convention not in ("vllm", "transformers"):
            raise ValueError(f"NorthConfig.window_convention: {self.window_convention!r} not in ['vllm', 'transformers']")
        if self.loss_impl not in ("chunked", "liger"):
            raise ValueError(f"NorthConfig.loss_impl: {self.loss_impl!r} not in ['chunked', 'liger']")

    # ---- derived facts every module asks for ------------------------------------------------------------
    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def is_dense(self, layer: int) -> bool:
        return self.mlp_layer_types[layer] == DENSE

    def uses_rope(self, layer: int) -> bool:
        """RoPE on sliding layers and on the dense prefix (HF `prefix_dense_sliding_window_pattern == 1`); the
        other global layers are NoPE."""
        prefix_dense = all(t == DENSE for t in self.mlp_layer_types[: layer + 1])
        return self.is_sliding(layer) or prefix_dense

    def attention_window(self, layer: int) -> int | None:
        """Number of *previous* tokens a token sees on this layer (plus itself); None on global layers."""
        if not self.is_sliding(layer):
            return None
        return self.sliding_window if self.window_convention == "vllm" else self.sliding_window - 1

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if not self.is_dense(i)]

    def replace(self, **changes: Any) -> NorthConfig:
        return dataclasses.replace(self, **changes)

    # ---- presets ----------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NorthConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown NorthConfig preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # ---- HF config.json ---------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> NorthConfig:
        """Read a transformers `config.json` dict of `model_type: cohere2_moe`. Keys we do not understand are an
        error (naming them) rather than silently ignored: they could change the architecture."""
        src = dict(d)
        if src.get("model_type") != "cohere2_moe":
            raise ValueError(f"config.json: model_type {src.get('model_type')!r} is not supported (need 'cohere2_moe')")
        src.pop("model_type")
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_experts",
                    "num_experts_per_tok", "intermediate_size")
        missing = [k for k in required if k not in src]
        if missing:
            raise ValueError(f"config.json: missing required keys {missing}")
        if src.get("expert_selection_fn", "softmax") != "sigmoid":
            raise ValueError(f"config.json: expert_selection_fn {src.get('expert_selection_fn')!r} unsupported (need 'sigmoid')")
        if src.get("num_shared_experts", 0):
            raise ValueError("config.json: num_shared_experts > 0 is unsupported (North has none)")
        if src.get("attention_bias", False):
            raise ValueError("config.json: attention_bias=true is unsupported")
        if src.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act {src['hidden_act']!r} unsupported (need 'silu')")
        if src.get("rms_norm_eps") is None:
            raise ValueError("config.json: rms_norm_eps missing/null (LayerNorm variant of cohere2_moe unsupported)")
        if src.get("prefix_dense_sliding_window_pattern", 1) != 1:
            raise ValueError("config.json: prefix_dense_sliding_window_pattern != 1 unsupported")
        rope = src.pop("rope_parameters", None) or {}
        if src.get("rope_scaling") or rope.get("rope_type", "default") != "default":
            raise ValueError("config.json: rope_scaling / non-default rope_type unsupported")
        if src.get("sliding_window") is None:
            raise ValueError("config.json: sliding_window must be set")
        n = src["num_hidden_layers"]
        mlp_types = src.pop("mlp_layer_types", None)
        first_k = src.pop("first_k_dense_replace", None)
        if mlp_types is None:
            mlp_types = [DENSE if i < (first_k or 0) else SPARSE for i in range(n)]
        first_k_dense = next((i for i, t in enumerate(mlp_types) if t != DENSE), len(mlp_types))
        layer_types = src.pop("layer_types", None)
        if layer_types is None:  # transformers' derivation from the sliding pattern
            pattern = src.get("sliding_window_pattern", 4)
            layer_types = [FULL] * first_k_dense + [
                SLIDING if (i + 1) % pattern else FULL for i in range(n - first_k_dense)]
        fields = {
            "vocab_size": src.pop("vocab_size"), "hidden_size": src.pop("hidden_size"),
            "num_hidden_layers": src.pop("num_hidden_layers"), "num_attention_heads": src.pop("num_attention_heads"),
            "num_experts": src.pop("num_experts"), "num_experts_per_tok": src.pop("num_experts_per_tok"),
            "expert_intermediate_size": src.pop("intermediate_size"),
            "layer_types": tuple(layer_types), "mlp_layer_types": tuple(mlp_types), "first_k_dense": first_k_dense,
            "rope_theta": float(rope.get("rope_theta", src.pop("rope_theta", 10000.0))),
        }
        fields["num_key_value_heads"] = src.pop("num_key_value_heads", None) or fields["num_attention_heads"]
        fields["head_dim"] = src.pop("head_dim", None) or fields["hidden_size"] // fields["num_attention_heads"]
        fields["dense_intermediate_size"] = src.pop("prefix_dense_intermediate_size", None) or fields["expert_intermediate_size"]
        for key in ("sliding_window", "logit_scale", "tie_word_embeddings", "norm_topk_prob", "rms_norm_eps",
                    "max_position_embeddings", "initializer_range", "pad_token_id", "bos_token_id", "eos_token_id"):
            if key in src:
                fields[key] = src.pop(key)
        if isinstance(fields.get("eos_token_id"), list):
            fields["eos_token_id"] = tuple(fields["eos_token_id"])
        for key in ("expert_selection_fn", "num_shared_experts", "attention_bias", "prefix_dense_sliding_window_pattern"):
            src.pop(key, None)
        unknown = sorted(k for k in src if k not in _HF_IGNORED_KEYS)
        if unknown:
            raise ValueError(f"config.json: unknown keys {unknown} (cohere2_moe keys we cannot map)")
        return cls(**{**fields, **overrides})

    def to_hf_dict(self) -> dict[str, Any]:
        """The transformers / vLLM `config.json` for this architecture (backend choices are not written)."""
        return {
            "architectures": ["Cohere2MoeForCausalLM"],
            "model_type": "cohere2_moe",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.expert_intermediate_size,
            "prefix_dense_intermediate_size": self.dense_intermediate_size,
            "first_k_dense_replace": self.first_k_dense,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_shared_experts": 0,
            "expert_selection_fn": "sigmoid",
            "norm_topk_prob": self.norm_topk_prob,
            "layer_types": list(self.layer_types),
            "mlp_layer_types": list(self.mlp_layer_types),
            "prefix_dense_sliding_window_pattern": 1,
            "sliding_window_pattern": self.global_every,
            "sliding_window": self.sliding_window,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rms_norm_eps": self.rms_norm_eps,
            "logit_scale": self.logit_scale,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "hidden_act": "silu",
            "attention_bias": False,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
        }


def _check_types(cfg: NorthConfig) -> None:
    """Reject a wrong-typed field (e.g. a YAML string where an int belongs) with the key named."""
    hints = typing.get_type_hints(NorthConfig)
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
        ok = False
        for t in allowed:
            if t is type(None):
                ok = ok or value is None
            elif typing.get_origin(t) is tuple:
                item = typing.get_args(t)[0]
                ok = ok or (isinstance(value, (tuple, list)) and all(isinstance(v, item) and not isinstance(v, bool)
                                                                     for v in value))
            elif t is float:
                ok = ok or (isinstance(value, (int, float)) and not isinstance(value, bool))
            elif t is int:
                ok = ok or (isinstance(value, int) and not isinstance(value, bool))
            else:
                ok = ok or isinstance(value, t)
        if not ok:
            raise TypeError(f"NorthConfig.{f.name}: expected {hint}, got {type(value).__name__} {value!r}")
        if hint is float and isinstance(value, int):
            object.__setattr__(cfg, f.name, float(value))


_UnionType = type(int | None)

PRESETS: dict[str, dict[str, Any]] = {
    # North Mini Code (30B total, ~3B active): Cohere2MoE with a dense, RoPE'd first layer.
    "north_mini_code_30b": dict(
        vocab_size=262144, hidden_size=2048, num_hidden_layers=49, num_attention_heads=32, num_key_value_heads=4,
        head_dim=128, num_experts=128, num_experts_per_tok=8, expert_intermediate_size=768,
        dense_intermediate_size=3072, first_k_dense=1, global_every=4, sliding_window=4096, rope_theta=50000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, norm_topk_prob=False, max_position_embeddings=131072,
    ),
    # CPU-sized model with the same shape rules; head_dim 64 is one of vLLM-CPU's attention head sizes.
    "tiny": dict(
        vocab_size=4096, hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, num_experts=16, num_experts_per_tok=4, expert_intermediate_size=64,
        dense_intermediate_size=512, first_k_dense=1, global_every=4, sliding_window=64, rope_theta=50000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, norm_topk_prob=False, max_position_embeddings=8192,
        eos_token_id=5,  # the shipped tiny tokenizer's <|END_OF_TURN_TOKEN|>, so HF/vLLM generation stops at turn end
    ),
}


def build_north_config(model: str | dict[str, Any], init_from: str | None = None,
                       config_overrides: dict[str, Any] | None = None) -> NorthConfig:
    """Model config from an HF directory (`init_from`), a preset name, or a dict of `NorthConfig` fields
    (optionally with `preset` naming the base preset)."""
    overrides = dict(config_overrides or {})
    if init_from is not None:
        config_path = Path(init_from) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"init_from={init_from!r}: no config.json (expected an HF model directory)")
        return NorthConfig.from_hf_dict(json.loads(config_path.read_text()), **overrides)
    if isinstance(model, str):
        return NorthConfig.preset(model, **overrides)
    fields = dict(model)
    preset = fields.pop("preset", None)
    return NorthConfig.preset(preset, **fields, **overrides) if preset else NorthConfig(**fields, **overrides)
