"""GPT-J-style (interleaved) rotary position embedding, as Cohere models use it.

Pairs are adjacent channels (2i, 2i+1), not the two halves of the head (the NeoX/Llama layout): a checkpoint
trained one way is silently wrong the other way, so this is tested against transformers and vLLM.
"""

from __future__ import annotations

import torch


def rope_cos_sin(position_ids_BS: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [B, S, head_dim // 2], always float32 (positions up to 128K need the precision)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids_BS.device, dtype=torch.float32) / head_dim))
    angles_BSd = position_ids_BS.to(torch.float32)[..., None] * inv_freq
    return angles_BSd.cos(), angles_BSd.sin()


def apply_rope(x_BSHd: torch.Tensor, cos_BSd: torch.Tensor, sin_BSd: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent channel pair of every head by its position's angle (computed in float32)."""
    x = x_BSHd.float().unflatten(-1, (-1, 2))
    even, odd = x[..., 0], x[..., 1]
    cos, sin = cos_BSd[:, :, None, :], sin_BSd[:, :, None, :]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    return rotated.flatten(-2).to(x_BSHd.dtype)
