"""GPT-J-style (interleaved) rotary position embedding, as Cohere models use it.

Pairs are adjacent channels (2i, 2i+1), not the two halves of the head (the NeoX/Llama layout): a checkpoint
trained one way is silently wrong the other way, so this is tested against transformers and vLLM.
"""

from __future__ import annotations

import torch


def rope_cos_sin(position_ids_BS: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [B, S, head_dim // 2], always float32 (positions up to 128K need the precision).

    The angles are float32 products, as in transformers and vLLM. Their cos/sin come from `torch.polar` in float64,
    rounded: on the CPU, `Tensor.cos()` runs in chunks on the intra-op threads and the chunk of one thread was
    sometimes computed at reduced accuracy (cos(1.0) off by 7e-9 in float64, half the tensor affected, in about 1
    process of 8), so two identical 2-thread runs trained differently. polar's elementwise cos/sin agree with libm
    in every process (and the float32 result with transformers' to one ulp)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids_BS.device, dtype=torch.float32) / head_dim))
    angles_BSd = (position_ids_BS.to(torch.float32)[..., None] * inv_freq).double()
    rotation_BSd = torch.polar(torch.ones_like(angles_BSd), angles_BSd)
    return rotation_BSd.real.float(), rotation_BSd.imag.float()


def apply_rope(x_BSHd: torch.Tensor, cos_BSd: torch.Tensor, sin_BSd: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent channel pair of every head by its position's angle (computed in float32)."""
    x = x_BSHd.float().unflatten(-1, (-1, 2))
    even, odd = x[..., 0], x[..., 1]
    cos, sin = cos_BSd[:, :, None, :], sin_BSd[:, :, None, :]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    return rotated.flatten(-2).to(x_BSHd.dtype)
