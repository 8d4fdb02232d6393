"""Chunked output head: per-token log-probabilities, entropy and cross-entropy without full [S, V] logits.

With a 262,144-token vocabulary a 128K-token sequence would need 128 GiB of fp32 logits. We walk the tokens in
chunks; each chunk's logits live only inside a `torch.utils.checkpoint` region, so the forward keeps just the
per-token results and the backward recomputes one chunk's logits at a time. Logits are computed in float32 (the
softmax over 262K entries in bf16 is not accurate enough for RL importance ratios).

The SFT loss (a sum or mean of -log p(target), nothing per token) can instead use Liger-Kernel's fused linear
cross-entropy (`NorthConfig.loss_impl = "liger"`, CUDA only): its Triton kernel computes the loss and both
gradients in one pass over vocabulary chunks, with logits in the input dtype (bf16). `cross_entropy()` picks the
implementation. The RL path (per-token log-probabilities and entropy, `chunked_token_logprobs`) always stays on
the chunked fp32 head: Liger returns neither per-token log-probabilities nor entropies, and bf16 logits would be
too coarse for importance ratios anyway.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
LOSS_IMPLS = ("chunked", "liger")
LIGER_INSTALL_HINT = ("loss_impl='liger' needs Liger-Kernel (CUDA + Triton): pip install liger-kernel "
                      "(or pip install 'north_lightning[liger]'), or use loss_impl='chunked'")


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
    [B, S] each. Positions whose target is -100 get 0 for both. Differentiable w.r.t. hidden and weight.

    Only positions with a target go through the head: agent data trains on the assistant's tokens alone
    (prompts, tool schemas and observations are most of a trajectory), so gathering them first skips most of
    the vocabulary projection, its recomputation in backward and the softmax."""
    B, S, D = hidden_BSD.shape
    hidden_ND, targets_N = hidden_BSD.reshape(-1, D), targets_BS.reshape(-1)
    index_K = (targets_N != IGNORE_INDEX).nonzero().squeeze(-1)
    hidden_KD, targets_K = hidden_ND.index_select(0, index_K), targets_N.index_select(0, index_K)
    logps, entropies = [], []
    for start in range(0, max(index_K.numel(), 1), chunk_size):  # one (empty) chunk keeps the graph when K = 0
        h_CD, t_C = hidden_KD[start:start + chunk_size], targets_K[start:start + chunk_size]
        if torch.is_grad_enabled() and (h_CD.requires_grad or weight_VD.requires_grad):
            logp_C, ent_C = checkpoint(_chunk_logprobs, h_CD, weight_VD, t_C, scale, with_entropy, use_reentrant=False)
        else:
            logp_C, ent_C = _chunk_logprobs(h_CD, weight_VD, t_C, scale, with_entropy)
        logps.append(logp_C)
        entropies.append(ent_C)

    def scatter(values_K: torch.Tensor) -> torch.Tensor:
        return values_K.new_zeros(B * S).index_copy(0, index_K, values_K).view(B, S)

    return scatter(torch.cat(logps)), (scatter(torch.cat(entropies)) if with_entropy else None)


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


def load_liger_loss_class() -> type:
    """Liger's `LigerFusedLinearCrossEntropyLoss`, imported only when asked for (the CPU package never needs it).
    Missing = an ImportError naming the install, never a fallback to the chunked head."""
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError as exc:
        raise ImportError(f"{LIGER_INSTALL_HINT} ({exc})") from exc
    return LigerFusedLinearCrossEntropyLoss


def liger_cross_entropy(hidden_BSD: torch.Tensor, weight_VD: torch.Tensor, targets_BS: torch.Tensor, *,
                        scale: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Same value as `chunked_cross_entropy` (targets -100 ignored, "mean" over the non-ignored ones or "sum"),
    computed by Liger's fused linear cross-entropy on CUDA. float32 scalar.

    `logit_scale`: our logits are `scale * (h @ W^T)` with W the (tied) embedding; that equals `(scale * h) @ W^T`,
    so the hidden states are scaled (an [N, D] product, not a copy of the [V, D] weight) and autograd carries the
    factor into both gradients. Hidden states are cast to the weight's dtype (Liger multiplies them as they are).
    Where the installed Liger offers `accum_dtype`, the weight gradient accumulates in float32 over its chunks
    (with a 262K vocabulary and D=2048 Liger walks the tokens 16 at a time; bf16 accumulation would drift)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"liger_cross_entropy: reduction {reduction!r} not in ['mean', 'sum']")
    loss_cls = load_liger_loss_class()
    if not hidden_BSD.is_cuda:
        raise RuntimeError(f"loss_impl='liger' needs CUDA tensors, got {hidden_BSD.device} "
                           f"(use loss_impl='chunked' elsewhere)")
    kwargs = {"ignore_index": IGNORE_INDEX, "reduction": reduction}
    if "accum_dtype" in inspect.signature(loss_cls.__init__).parameters:
        kwargs["accum_dtype"] = torch.float32
    h_ND = hidden_BSD.reshape(-1, hidden_BSD.shape[-1])
    if scale != 1.0:
        h_ND = h_ND * scale
    out = loss_cls(**kwargs)(weight_VD, h_ND.to(weight_VD.dtype).contiguous(), targets_BS.reshape(-1).contiguous())
    loss = out if isinstance(out, torch.Tensor) else out.loss  # newer Liger may return a named tuple
    return loss.float()


def cross_entropy(hidden_BSD: torch.Tensor, weight_VD: torch.Tensor, targets_BS: torch.Tensor, *,
                  scale: float = 1.0, chunk_size: int = 1024, reduction: str = "mean",
                  impl: str = "chunked") -> torch.Tensor:
    """Token-level cross-entropy of the output head by the implementation `NorthConfig.loss_impl` names."""
    if impl == "chunked":
        return chunked_cross_entropy(hidden_BSD, weight_VD, targets_BS, scale=scale, chunk_size=chunk_size,
                                     reduction=reduction)
    if impl == "liger":
        return liger_cross_entropy(hidden_BSD, weight_VD, targets_BS, scale=scale, reduction=reduction)
    raise ValueError(f"unknown loss_impl {impl!r}; available: {list(LOSS_IMPLS)}")
