"""`flex` attention backend: torch FlexAttention with a `BlockMask` = same document AND causal AND window.

Why FlexAttention: the mask is a predicate, so packed documents and the sliding window cost nothing to express,
and the block-sparse kernel skips every 128x128 tile the predicate rules out. With window W and S tokens the work
is O(S * W) on sliding layers instead of the O(S^2) of a dense SDPA mask. GQA is native (`enable_gqa=True`, K/V
are never repeated).

The window follows the Cohere/vLLM convention used everywhere in the model: `window` counts *previous* tokens,
so a query at position q sees keys kv with q - W <= kv <= q (itself + W earlier tokens).

On CUDA `flex_attention` is compiled (torch.compile generates the fused Triton kernel; eager flex is a slow
reference). On CPU it runs too (torch >= 2.6): eager by default because compiling the C++ template costs more
than the small CPU tests it would speed up; set `NORTH_FLEX_COMPILE=1` to compile on CPU as well.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from north_lightning.model.attention import SequenceLayout


@lru_cache(maxsize=None)
def _compiled_flex():  # one compiled callable per process; torch.compile caches graphs per shape/dtype
    return torch.compile(flex_attention, dynamic=False)


def _use_compiled(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("NORTH_FLEX_COMPILE", "0") == "1"


def document_window_mask_mod(document_ids_BS: torch.Tensor | None, window: int | None):
    """The FlexAttention `mask_mod(b, h, q, kv) -> bool` for packed documents, causality and the window."""

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = q_idx >= kv_idx
        if window is not None:
            allowed = allowed & (q_idx - kv_idx <= window)
        if document_ids_BS is not None:
            allowed = allowed & (document_ids_BS[b, q_idx] == document_ids_BS[b, kv_idx])
        return allowed

    return mask_mod


def block_mask_for(layout: SequenceLayout, window: int | None, device: torch.device) -> BlockMask:
    """BlockMask for this layout and window, built once per forward and shared by all layers that use it."""
    key = ("flex_block_mask", window, str(device))
    if key not in layout._cache:
        doc_BS = layout.document_ids_BS.to(device) if layout.document_ids_BS is not None else None
        batch = layout.batch_size if doc_BS is not None else None
        # compiled mask construction on CUDA: the eager path materialises the full S x S boolean mask first
        # (16 GiB at 128K tokens); the compiled one works block by block
        layout._cache[key] = create_block_mask(
            document_window_mask_mod(doc_BS, window), B=batch, H=None,
            Q_LEN=layout.seq_len, KV_LEN=layout.seq_len, device=device, _compile=_use_compiled(device),
        )
    return layout._cache[key]


class FlexAttention(nn.Module):
    """Same interface as `SDPAAttention`: q [B,S,H,d], k/v [B,S,G,d] (G KV heads), returns [B,S,H,d]."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, q_BSHd: torch.Tensor, k_BSGd: torch.Tensor, v_BSGd: torch.Tensor, layout: SequenceLayout,
                window: int | None) -> torch.Tensor:
        block_mask = block_mask_for(layout, window, q_BSHd.device)
        flex = _compiled_flex() if _use_compiled(q_BSHd.device) else flex_attention
        out_BHSd = flex(
            q_BSHd.transpose(1, 2), k_BSGd.transpose(1, 2), v_BSGd.transpose(1, 2),
            block_mask=block_mask, scale=self.scale, enable_gqa=True,
        )
        return out_BHSd.transpose(1, 2)
