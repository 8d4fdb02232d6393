"""`megablocks` experts backend: megablocks' grouped-GEMM GLU path, fed by *our* router (CUDA only).

megablocks' dMoE layer (`megablocks.layers.dmoe`, `mlp_type="glu"`, `mlp_impl="grouped"`) runs its own router
and permutation, then calls `grouped_gemm.ops.gmm` once per projection over the expert-sorted tokens
(`megablocks.layers.glu.GroupedGLU`). We keep our router (top-k logits, sigmoid weights, no renormalisation)
and our stable expert sort (`moe.sort_by_expert`), and call the same grouped GEMM megablocks uses
(`megablocks.grouped_gemm_util.ops.gmm`) on our fused HF-layout weights: `gate_up_proj` [E, 2F, D] and
`down_proj` [E, D, F] with `trans_b=True`. Checkpoints therefore stay identical whichever backend trained.

Install (megablocks pins an old torch, so never let pip resolve its dependencies on a CUDA machine):
    pip install --no-deps megablocks stanford-stk grouped_gemm
`grouped_gemm` is a CUDA extension: it needs a wheel built for the installed torch/CUDA (or a source build with
nvcc). A missing or ABI-mismatched install is an ImportError naming this, never a silent fallback.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from north_lightning.model.moe import ExpertRouting, TorchExperts

INSTALL_HINT = ("the 'megablocks' experts backend needs megablocks + grouped_gemm built for this torch/CUDA: "
                "pip install --no-deps megablocks stanford-stk grouped_gemm (see docs/scale_out.md), "
                "or use experts_backend='grouped'")


def load_gmm():
    """megablocks' grouped GEMM op (`gmm(a, b, batch_sizes, trans_b=...)`)."""
    try:
        gg = importlib.import_module("megablocks.grouped_gemm_util")
    except (ImportError, OSError) as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    if not gg.grouped_gemm_is_available():
        raise ImportError(f"{INSTALL_HINT} (megablocks imported but grouped_gemm did not)")
    return gg.ops.gmm


class MegablocksExperts(TorchExperts):
    """Same parameters as `TorchExperts`; the forward is two megablocks grouped GEMMs (bf16, CUDA)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self._gmm = load_gmm()

    def forward(self, x_ND: torch.Tensor, routing: ExpertRouting) -> torch.Tensor:
        if not x_ND.is_cuda or x_ND.dtype != torch.bfloat16:
            raise RuntimeError(f"experts backend 'megablocks' needs bf16 CUDA tokens, got {x_ND.dtype} on "
                               f"{x_ND.device} (use experts_backend='grouped' or 'torch' elsewhere)")
        batch_sizes_E = routing.counts_E.to("cpu", torch.int64)  # grouped_gemm takes host-side group sizes
        gate_up_proj = self.gate_up_proj.to(torch.bfloat16)
        down_proj = self.down_proj.to(torch.bfloat16)
        gate_up_N2F = self._gmm(x_ND.contiguous(), gate_up_proj, batch_sizes_E, trans_b=True)
        gate_NF, up_NF = gate_up_N2F.chunk(2, dim=-1)
        h_NF = (F.silu(gate_NF) * up_NF).contiguous()
        return self._gmm(h_NF, down_proj, batch_sizes_E, trans_b=True)
