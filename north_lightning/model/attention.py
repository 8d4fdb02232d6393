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
    """torch scaled_dot_product_attention with a dense boolean mask. Runs anywhere; the mask costs O(S^2)
    memory, which is fine for CPU tests and short sequences (use `flash`/`flex` for long packed batches)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, q_BSHd: torch.Tensor, k_BSGd: torch.Tensor, v_BSGd: torch.Tensor, layout: SequenceLayout,
                window: int | None) -> torch.Tensor:
        mask = layout.allowed_mask(window, q_BSHd.device)
        out_BHSd = F.scaled_dot_product_attention(
            q_BSHd.transpose(1, 2), k_BSGd.transpose(1, 2), v_BSGd.transpose(1, 2),
            attn_mask=mask, scale=self.scale, enable_gqa=True,
        )
        return out_BHSd.transpose(1, 2)
