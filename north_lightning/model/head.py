"""Chunked output head: per-token log-probabilities, entropy and cross-entropy without full [S, V] logits.

With a 262,144-token vocabulary a 128K-token sequence would need 128 GiB of fp32 logits. We walk the tokens in
chunks; each chunk's logits live only inside a `torch.utils.checkpoint` region, so the forward keeps just the
per-token results and the backward recomputes one chunk's logits at a time. Logits are computed in float32 (the
softmax over 262K entries in bf16 is not accurate enough for RL importance ratios).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_logprobs(hidden_CD: torch.Tensor, weight_VD: torch.Tensor, targets_C: torch.Tensor, scale: float,
                    with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits_CV = F.linear(hidden_CD.float(), weight_VD.float()) * scale
    lse_C = torch.logsumexp(logits_CV, dim=-1)
    valid_C = targets_C != IGNORE_INDEX
    target_logit_C = logits_CV.gather(-1, targets_C.clamp(min=0)[:, None]).squeeze(-1)
    logp_C = torch.where(valid_C, target_logit_C - lse_C, 0.0)
    if with_entropy:
        probs_CV = torch.softmax(logits_CV, dim=-1)
        entropy_C = torch.where(valid_C, lse_C - (probs_CV * logits_CV).sum(-1), 0.0)
    else:
        entropy_C = torch.zeros_like(logp_C)
    return logp_C, entropy_C


def chunked_token_logprobs(hidden_BSD: torch.Tensor, weight_VD: torch.Tensor, targets_BS: torch.Tensor, *,
                           scale: float = 1.0, chunk_size: int = 1024,
                           with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) and (optionally) the entropy of the predicted distribution at every position, float32,
    [B, S] each. Positions whose target is -100 get 0 for both. Differentiable w.r.t. hidden and weight."""
    B, S, D = hidden_BSD.shape
    hidden_ND, targets_N = hidden_BSD.reshape(-1, D), targets_BS.reshape(-1)
    logps, entropies = [], []
    for start in range(0, hidden_ND.shape[0], chunk_size):
        h_CD, t_C = hidden_ND[start:start + chunk_size], targets_N[start:start + chunk_size]
        if torch.is_grad_enabled() and (h_CD.requires_grad or weight_VD.requires_grad):
            logp_C, ent_C = checkpoint(_chunk_logprobs, h_CD, weight_VD, t_C, scale, with_entropy, use_reentrant=False)
        else:
            logp_C, ent_C = _chunk_logprobs(h_CD, weight_VD, t_C, scale, with_entropy)
        logps.append(logp_C)
        entropies.append(ent_C)
    logp_BS = torch.cat(logps).view(B, S)
    return logp_BS, (torch.cat(entropies).view(B, S) if with_entropy else None)


def chunked_cross_entropy(hidden_BSD: torch.Tensor, weight_VD: torch.Tensor, targets_BS: torch.Tensor, *,
                          scale: float = 1.0, chunk_size: int = 1024, reduction: str = "mean") -> torch.Tensor:
    """Token-level cross-entropy over the non-ignored targets ("mean" over them, or "sum"), equal to
    `F.cross_entropy(full_logits, targets, ignore_index=-100)` without ever building the full logits."""
    logp_BS, _ = chunked_token_logprobs(hidden_BSD, weight_VD, targets_BS, scale=scale, chunk_size=chunk_size)
    total = -logp_BS.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (targets_BS != IGNORE_INDEX).sum().clamp(min=1)
    raise ValueError(f"chunked_cross_entropy: reduction {reduction!r} not in ['mean', 'sum']")
