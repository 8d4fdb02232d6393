"""`NorthForCausalLM`: the North (Cohere2MoE) decoder as a plain `nn.Module`, readable top to bottom.

Per layer: one RMSNorm feeding attention and the MLP in parallel, `x + attn(norm(x)) + mlp(norm(x))`.
Attention: GQA; interleaved RoPE on sliding-window layers and on the dense prefix; the other global layers
are NoPE. MLP: dense SwiGLU on the prefix, routed SwiGLU experts elsewhere. Output: tied embedding x
`logit_scale`. Parameter names follow the HF checkpoint (`model.layers.N.self_attn.q_proj`, ...) so the
state-dict adapter in hf.py only has to split/fuse the experts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from north_lightning.model.attention import ATTENTION_BACKENDS, SequenceLayout, load_backend
from north_lightning.model.config import NorthConfig
from north_lightning.model.head import chunked_token_logprobs
from north_lightning.model.moe import DenseMLP, MoEBlock
from north_lightning.model.rope import apply_rope, rope_cos_sin

# Expert choices to replay: one [B*S, K] index tensor per MoE layer, or one [B, S, num_moe_layers, K] tensor.
RoutedExperts = Sequence[torch.Tensor] | torch.Tensor


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, weight applied before casting back (vLLM's order; identical in fp32)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x32).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: NorthConfig, layer: int) -> None:
        super().__init__()
        D, H, G, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.head_dim, self.use_rope = d, config.uses_rope(layer)
        self.window = config.attention_window(layer)
        self.q_proj = nn.Linear(D, H * d, bias=False)
        self.k_proj = nn.Linear(D, G * d, bias=False)
        self.v_proj = nn.Linear(D, G * d, bias=False)
        self.o_proj = nn.Linear(H * d, D, bias=False)
        self.backend = load_backend(ATTENTION_BACKENDS, config.attn_backend, "attention")(scale=d**-0.5)

    def forward(self, x_BSD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], layout: SequenceLayout) -> torch.Tensor:
        B, S, _ = x_BSD.shape
        q_BSHd = self.q_proj(x_BSD).view(B, S, -1, self.head_dim)
        k_BSGd = self.k_proj(x_BSD).view(B, S, -1, self.head_dim)
        v_BSGd = self.v_proj(x_BSD).view(B, S, -1, self.head_dim)
        if self.use_rope:
            q_BSHd, k_BSGd = apply_rope(q_BSHd, *rope), apply_rope(k_BSGd, *rope)
        out_BSHd = self.backend(q_BSHd, k_BSGd, v_BSGd, layout, self.window)
        return self.o_proj(out_BSHd.reshape(B, S, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config: NorthConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.mlp = DenseMLP(config) if config.is_dense(layer) else MoEBlock(config, layer)

    def forward(self, x_BSD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], layout: SequenceLayout,
                routed_experts_TK: torch.Tensor | None = None) -> torch.Tensor:
        h_BSD = self.input_layernorm(x_BSD)
        mlp_BSD = self.mlp(h_BSD) if routed_experts_TK is None else self.mlp(h_BSD, routed_experts_TK)
        return x_BSD + self.self_attn(h_BSD, rope, layout) + mlp_BSD


class NorthModel(nn.Module):
    def __init__(self, config: NorthConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class NorthForCausalLM(nn.Module):
    """See the module docstring. `forward` returns full logits (short sequences only); training and RL use
    `token_logprobs`, which never materialises [S, V]."""

    def __init__(self, config: NorthConfig) -> None:
        super().__init__()
        self.config = config
        self.model = NorthModel(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Normal(0, initializer_range) for matrices, ones for norms; depth-scaled output projections."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                scale = 1.0 / math.sqrt(2 * self.config.num_hidden_layers) if name.endswith(("o_proj.weight", "down_proj", "down_proj.weight")) else 1.0
                nn.init.normal_(p, mean=0.0, std=std * scale, generator=gen)

    def output_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, input_ids_BS: torch.Tensor, position_ids: torch.Tensor | None = None,
                      document_ids: torch.Tensor | None = None,
                      routed_experts: RoutedExperts | None = None) -> torch.Tensor:
        """Final-norm hidden states [B, S, D]. Packed rows: `document_ids` keeps documents apart; positions
        default to restarting at 0 at each document start. `routed_experts` replays given expert choices (one
        [B*S, K] index tensor per MoE layer, or a [B, S, num_moe_layers, K] tensor; see `moe.py`); after any
        forward, `last_routed_experts()` returns the choices made."""
        B, S = input_ids_BS.shape
        if position_ids is None:
            position_ids = positions_from_documents(document_ids) if document_ids is not None else \
                torch.arange(S, device=input_ids_BS.device).expand(B, S)
        layout = SequenceLayout(B, S, document_ids)
        rope = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        replay = self._routed_experts_per_layer(routed_experts, B, S)
        x_BSD = self.model.embed_tokens(input_ids_BS)
        for i, layer in enumerate(self.model.layers):
            x_BSD = layer(x_BSD, rope, layout) if i not in replay else layer(x_BSD, rope, layout, replay[i])
        return self.model.norm(x_BSD)

    def forward(self, input_ids_BS: torch.Tensor, position_ids: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, routed_experts: RoutedExperts | None = None) -> torch.Tensor:
        h_BSD = self.hidden_states(input_ids_BS, position_ids, document_ids, routed_experts)
        return nn.functional.linear(h_BSD, self.output_weight()) * self.config.logit_scale

    def token_logprobs(self, input_ids_BS: torch.Tensor, targets_BS: torch.Tensor, position_ids: torch.Tensor | None = None,
                       document_ids: torch.Tensor | None = None, with_entropy: bool = False,
                       routed_experts: RoutedExperts | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float32 log p(target) [B, S] (0 where target is -100) and optionally the entropy [B, S]."""
        h_BSD = self.hidden_states(input_ids_BS, position_ids, document_ids, routed_experts)
        return chunked_token_logprobs(h_BSD, self.output_weight(), targets_BS, scale=self.config.logit_scale,
                                      chunk_size=self.config.head_chunk_size, with_entropy=with_entropy)

    def moe_blocks(self) -> list[MoEBlock]:
        return [layer.mlp for layer in self.model.layers if isinstance(layer.mlp, MoEBlock)]

    def last_routed_experts(self) -> list[torch.Tensor]:
        """The experts each MoE layer used in the last forward (own top-k or replayed), one detached [B*S, K]
        index tensor per MoE layer in layer order (uint8; int16 above 256 experts): what `routed_experts=`
        replays."""
        routed = [b.last_expert_idx_TK for b in self.moe_blocks()]
        if any(r is None for r in routed):
            raise RuntimeError("last_routed_experts(): no forward has run yet")
        return routed

    def moe_layer_indices(self) -> list[int]:
        """Decoder-layer index of each MoE layer (vLLM's `routed_experts` has a row for every decoder layer: take
        these to get what `routed_experts=` expects)."""
        return [i for i, layer in enumerate(self.model.layers) if isinstance(layer.mlp, MoEBlock)]

    def _routed_experts_per_layer(self, routed: RoutedExperts | None, B: int, S: int) -> dict[int, torch.Tensor]:
        """{decoder layer index: [B*S, K] indices} from either accepted form, checking the layer count."""
        if routed is None:
            return {}
        moe_layers = self.moe_layer_indices()
        if isinstance(routed, torch.Tensor):
            if routed.dim() != 4 or tuple(routed.shape[:3]) != (B, S, len(moe_layers)):
                raise ValueError(f"routed_experts tensor has shape {tuple(routed.shape)}, expected [{B}, {S}, "
                                 f"{len(moe_layers)}, top_k] (batch, seq, MoE layers, top_k)")
            per_layer = [r.reshape(B * S, -1) for r in routed.unbind(2)]
        else:
            per_layer = list(routed)
        if len(per_layer) != len(moe_layers):
            raise ValueError(f"routed_experts has {len(per_layer)} layers, the model has {len(moe_layers)} MoE "
                             f"layers (decoder layers {moe_layers})")
        return dict(zip(moe_layers, per_layer))

    def moe_aux_loss(self) -> torch.Tensor:
        """Sum over MoE layers of the last forward's load-balancing loss (coefficient applied; 0 if disabled or
        the last forward ran without gradients)."""
        losses = [b.aux_loss for b in self.moe_blocks() if b.aux_loss is not None]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.output_weight().device)

    def expert_load(self) -> torch.Tensor:
        """[num_moe_layers, E] fraction of routed slots per expert in the last forward."""
        loads = [b.expert_load_E for b in self.moe_blocks()]
        if any(load is None for load in loads):
            raise RuntimeError("expert_load(): no forward has run yet")
        return torch.stack(loads)

    @torch.no_grad()
    def greedy_generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation by full recomputation (no KV cache): slow but exactly this model's argmax, which
        is what parity tests against inference engines need."""
        ids = list(prompt_ids)
        device = self.output_weight().device
        for _ in range(max_new_tokens):
            h_D = self.hidden_states(torch.tensor([ids], device=device))[0, -1]
            ids.append(int(torch.argmax(h_D @ self.output_weight().T)))
        return ids[len(prompt_ids):]

    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides: Any) -> NorthForCausalLM:
        from north_lightning.model.hf import load_pretrained
        return load_pretrained(cls, path, **config_overrides)

    def save_pretrained(self, path: str | Path, tokenizer_dir: str | Path | None = None,
                        max_shard_bytes: int = 5 * 2**30) -> None:
        from north_lightning.model.hf import save_pretrained
        save_pretrained(self, path, tokenizer_dir=tokenizer_dir, max_shard_bytes=max_shard_bytes)


def positions_from_documents(document_ids_BS: torch.Tensor) -> torch.Tensor:
    """Position of every token within its document (0 at each document start, also at each row start)."""
    B, S = document_ids_BS.shape
    idx_BS = torch.arange(S, device=document_ids_BS.device).expand(B, S)
    is_start_BS = torch.ones_like(document_ids_BS, dtype=torch.bool)
    is_start_BS[:, 1:] = document_ids_BS[:, 1:] != document_ids_BS[:, :-1]
    start_BS = torch.where(is_start_BS, idx_BS, torch.zeros_like(idx_BS)).cummax(dim=1).values
    return idx_BS - start_BS
