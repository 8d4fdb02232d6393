"""Attention backends behind one small interface, chosen by `NorthConfig.attn_backend`.

Every backend receives the same thing: q/k/v in the packed-friendly [B, S, heads, head_dim] layout (what
flash-attn's varlen kernel wants after flattening B*S), a `SequenceLayout` that knows which document every token
belongs to (and can produce `cu_seqlens` for varlen kernels or a dense mask for SDPA), and `window` = the number
of *previous* tokens a token may see on a sliding layer (None = global). Backends never repeat K/V for GQA.

GPU backends live in their own modules and are imported only when asked for, so this CPU package never imports
flash_attn or similar at import time; a missing one is an error naming the extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS: dict[str, str] = {
    "sdpa": "north_lightning.model.attention:SDPAAttention",
    "flash": "north_lightning.model.attention_flash:FlashAttention",
    "flex": "north_lightning.model.attention_flex:FlexAttention",
}


def load_backend(registry: dict[str, str], name: str, what: str) -> type:
    """Import `module:Class` for `name` lazily. A failed import is an error naming the extra, never a fallback."""
    if name not in registry:
        raise ValueError(f"unknown {what} backend {name!r}; registered: {sorted(registry)}")
    module_name, class_name = registry[name].split(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            f"{what} backend {name!r} ({registry[name]}) could not be imported: {exc}. "
            f"GPU backends need the extra: pip install 'north_lightning[gpu]'"
        ) from exc


@dataclass
class SequenceLayout:
    """Which tokens may attend to which: rows of a batch, each holding one or more packed documents.

    `document_ids_BS` None means one document per row. Derived forms are computed once per forward and cached,
    because every layer of the model asks for the same ones.
    """

    batch_size: int
    seq_len: int
    document_ids_BS: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def allowed_mask(self, window: int | None, device: torch.device) -> torch.Tensor:
        """Boolean [B, 1, S, S]: same document AND causal AND (q - k <= window on sliding layers)."""
        key = ("mask", window)
        if key not in self._cache:
            pos = torch.arange(self.seq_len, device=device)
            delta_SS = pos[:, None] - pos[None, :]
            allowed_SS = delta_SS >= 0
            if window is not None:
                allowed_SS = allowed_SS & (delta_SS <= window)
            mask = allowed_SS[None, None].expand(self.batch_size, 1, -1, -1)
            if self.document_ids_BS is not None:
                same_doc_BSS = self.document_ids_BS[:, :, None] == self.document_ids_BS[:, None, :]
                mask = mask & same_doc_BSS[:, None]
            self._cache[key] = mask
        return self._cache[key]

    def blocked_window_mask(self, window: int, device: torch.device) -> torch.Tensor:
        """Boolean [B*n, 1, W, 2W] for `SDPAAttention._blocked`: query block i (W queries) against key blocks
        i-1 and i. Same rule as `allowed_mask`; keys before the row start are never visible, and padded tail
        queries see themselves (no all-masked rows)."""
        key = ("blocked", window)
        if key not in self._cache:
            W, S, B = window, self.seq_len, self.batch_size
            n_blocks = -(-S // W)
            tail = n_blocks * W - S
            q_pos_nW = torch.arange(n_blocks * W, device=device).view(n_blocks, W)
            k_pos_n2 = torch.arange(-W, n_blocks * W, device=device).unfold(0, 2 * W, W)
            delta_nW2 = q_pos_nW[:, :, None] - k_pos_n2[:, None, :]
            allowed_nW2 = (delta_nW2 >= 0) & (delta_nW2 <= W) & (k_pos_n2 >= 0)[:, None, :]
            mask_BnW2 = allowed_nW2[None].expand(B, -1, -1, -1)
            if self.document_ids_BS is not None:
                doc_BS = F.pad(self.document_ids_BS, (W, tail), value=-1)
                doc_q_BnW = doc_BS[:, W:].reshape(B, n_blocks, W)
                doc_k_Bn2 = doc_BS.unfold(1, 2 * W, W)
                mask_BnW2 = mask_BnW2 & (doc_q_BnW[..., :, None] == doc_k_Bn2[..., None, :])
            self._cache[key] = mask_BnW2.reshape(B * n_blocks, 1, W, 2 * W)
        return self._cache[key]

    def cu_seqlens(self, device: torch.device) -> tuple[torch.Tensor, int]:
        """int32 cumulative document lengths over the flattened B*S tokens, and the longest document, for varlen
        kernels. A new document starts at every row start and wherever the document id changes."""
        if "cu" not in self._cache:
            n = self.batch_size * self.seq_len
            starts_BS = torch.zeros(self.batch_size, self.seq_len, dtype=torch.bool, device=device)
            starts_BS[:, 0] = True
            if self.document_ids_BS is not None:
                starts_BS[:, 1:] = self.document_ids_BS[:, 1:] != self.document_ids_BS[:, :-1]
            start_idx = starts_BS.flatten().nonzero().flatten()
            cu = torch.cat([start_idx, torch.tensor([n], device=device)]).to(torch.int32)
            self._cache["cu"] = (cu, int((cu[1:] - cu[:-1]).max()))
        return self._cache["cu"]


class SDPAAttention(nn.Module):
    """torch scaled_dot_product_attention with a boolean mask. Runs anywhere.

    Global layers use the dense [S, S] mask. Sliding layers on rows much longer than the window are computed
    blockwise: queries in blocks of W attend only to their own and the previous key block (2W keys), which holds
    every key a query may see. Same result as the dense mask, but O(S*W) work and memory instead of O(S^2),
    which is what makes CPU training of the tiny model (window 64, 1-4K rows) cheap.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, q_BSHd: torch.Tensor, k_BSGd: torch.Tensor, v_BSGd: torch.Tensor, layout: SequenceLayout,
                window: int | None) -> torch.Tensor:
        q_BHSd, k_BGSd, v_BGSd = q_BSHd.transpose(1, 2), k_BSGd.transpose(1, 2), v_BSGd.transpose(1, 2)
        if window is not None and 0 < window and layout.seq_len >= 4 * window:
            out_BHSd = self._blocked(q_BHSd, k_BGSd, v_BGSd, layout, window)
        else:
            mask = layout.allowed_mask(window, q_BSHd.device)
            out_BHSd = F.scaled_dot_product_attention(q_BHSd, k_BGSd, v_BGSd, attn_mask=mask, scale=self.scale,
                                                      enable_gqa=True)
        return out_BHSd.transpose(1, 2)

    def _blocked(self, q_BHSd: torch.Tensor, k_BGSd: torch.Tensor, v_BGSd: torch.Tensor, layout: SequenceLayout,
                 window: int) -> torch.Tensor:
        B, H, S, d = q_BHSd.shape
        G = k_BGSd.shape[1]
        W = window
        n_blocks = -(-S // W)
        tail = n_blocks * W - S
        # Keys get one block of padding in front, so query block i sees key blocks i-1 and i as one 2W window.
        q_NHWd = F.pad(q_BHSd, (0, 0, 0, tail)).view(B, H, n_blocks, W, d).transpose(1, 2).reshape(-1, H, W, d)
        k_N2d = F.pad(k_BGSd, (0, 0, W, tail)).unfold(2, 2 * W, W).permute(0, 2, 1, 4, 3).reshape(-1, G, 2 * W, d)
        v_N2d = F.pad(v_BGSd, (0, 0, W, tail)).unfold(2, 2 * W, W).permute(0, 2, 1, 4, 3).reshape(-1, G, 2 * W, d)
        mask = layout.blocked_window_mask(W, q_BHSd.device)
        out = F.scaled_dot_product_attention(q_NHWd, k_N2d, v_N2d, attn_mask=mask, scale=self.scale, enable_gqa=True)
        return out.view(B, n_blocks, H, W, d).transpose(1, 2).reshape(B, H, n_blocks * W, d)[:, :, :S]
