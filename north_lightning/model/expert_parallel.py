"""Expert parallelism: each rank holds E/ep whole experts and exchanges routed tokens with an all-to-all.

Layout. A 2-D mesh ("dp_mod_ep", "ep") over the world. Expert weights are DTensors with placements
(Shard(1), Shard(0)): the expert dim is split over `ep`, and each rank's experts are further FSDP-style sharded
along dim 1 over the `dp_mod_ep` ranks that hold the same experts. Being DTensors with the true global shape
[E, 2F, D] / [E, D, F], they save into distributed checkpoints and gather into the HF layout like any other
parameter; FSDP2 ignores them (they are passed as `ignored_params`) and we do their gather/reduce ourselves:
`redistribute` to (Replicate, Shard(0)) all-gathers in the compute dtype just in time, and its backward
reduce-scatters the gradient (Partial -> Shard).

Forward, per MoE layer, given this rank's tokens sorted by global expert id (`ExpertRouting`):
1. all-to-all the per-expert counts, so every rank knows how many slots it receives per local expert;
2. all-to-all the token rows (contiguous per destination rank, since they are sorted by expert);
3. reorder the received rows (source-rank major) to local-expert major and run the configured experts math;
4. undo the reorder and all-to-all the results back. Both all-to-alls are differentiable.

Gradient scale: FSDP2 averages non-expert gradients over the world; the expert gradients arriving through the
all-to-all and the reduce-scatter are *sums* over ranks, so the weights' gradient is scaled by 1/world to match.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from north_lightning.model.moe import ExpertRouting, _grouped_mm


class _ScaleGrad(torch.autograd.Function):
    """Identity in forward, multiplies the gradient by `scale` in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def expert_math(backend: str, x_ND: torch.Tensor, gate_up_EFD: torch.Tensor, down_EDF: torch.Tensor,
                counts_E: torch.Tensor) -> torch.Tensor:
    """SwiGLU experts over expert-sorted rows with explicit weights: the same math as the experts backends."""
    if backend == "grouped":
        offs_E = counts_E.cumsum(0).to(torch.int32)
        gate_NF, up_NF = _grouped_mm(x_ND, gate_up_EFD.transpose(-2, -1), offs_E).chunk(2, dim=-1)
        return _grouped_mm(F.silu(gate_NF) * up_NF, down_EDF.transpose(-2, -1), offs_E)
    if backend == "megablocks":
        from north_lightning.model.experts_megablocks import load_gmm

        gmm, sizes_E = load_gmm(), counts_E.to("cpu", torch.int64)
        gate_NF, up_NF = gmm(x_ND.contiguous(), gate_up_EFD, sizes_E, trans_b=True).chunk(2, dim=-1)
        return gmm((F.silu(gate_NF) * up_NF).contiguous(), down_EDF, sizes_E, trans_b=True)
    if backend != "torch":
        raise ValueError(f"expert parallelism: unknown experts backend {backend!r}")
    outs = []
    for e, x_nD in enumerate(x_ND.split(counts_E.tolist())):
        gate_nF, up_nF = F.linear(x_nD, gate_up_EFD[e]).chunk(2, dim=-1)
        outs.append(F.linear(F.silu(gate_nF) * up_nF, down_EDF[e]))
    return torch.cat(outs) if outs else x_ND.new_zeros(0, down_EDF.shape[1])


class ExpertParallelExperts(nn.Module):
    """Drop-in for an experts backend module (same `forward(x_ND, routing)`), with its E experts split over the
    `ep` dim of `mesh` and sharded along dim 1 over `dp_mod_ep`. Parameter names stay `gate_up_proj` /
    `down_proj`, so state-dict keys are unchanged."""

    def __init__(self, experts: nn.Module, mesh: DeviceMesh, backend: str, world_size: int,
                 device: torch.device, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.mesh, self.backend, self.grad_scale = mesh, backend, 1.0 / world_size
        self.ep_group = mesh.get_group("ep")
        self.ep = mesh.size(1)
        num_experts = experts.gate_up_proj.shape[0]
        if num_experts % self.ep:
            raise ValueError(f"expert parallelism: {num_experts} experts do not split over ep={self.ep} ranks")
        self.local_experts = num_experts // self.ep
        for name in ("gate_up_proj", "down_proj"):
            full = getattr(experts, name).detach()
            if full.shape[1] % mesh.size(0):
                raise ValueError(f"expert parallelism: {name} dim 1 ({full.shape[1]}) must divide over "
                                 f"dp_mod_ep={mesh.size(0)} ranks")
            mine = full.chunk(self.ep, dim=0)[mesh.get_local_rank(1)]  # this ep rank's experts
            local = mine.chunk(mesh.size(0), dim=1)[mesh.get_local_rank(0)]  # this dp_mod_ep rank's dim-1 slice
            if local.is_meta:  # built on the meta device: storage only; the model's reset_parameters() fills it
                local = torch.empty(local.shape, dtype=dtype or local.dtype, device=device)
            local = local.to(device=device, dtype=dtype or local.dtype)  # this rank's slice only, never the full tensor
            dtensor = DTensor.from_local(local.contiguous(), mesh, [Shard(1), Shard(0)],
                                         run_check=False, shape=full.shape, stride=full.contiguous().stride())
            self.register_parameter(name, nn.Parameter(dtensor))

    def _local_weight(self, weight: nn.Parameter, dtype: torch.dtype) -> torch.Tensor:
        """This rank's experts, whole along dim 1, in the compute dtype (all-gather over dp_mod_ep)."""
        gathered = weight.to(dtype).redistribute(self.mesh, [Replicate(), Shard(0)])
        local = gathered.to_local(grad_placements=[Partial(), Shard(0)])
        return _ScaleGrad.apply(local, self.grad_scale)

    def forward(self, x_ND: torch.Tensor, routing: ExpertRouting) -> torch.Tensor:
        ep, local_e = self.ep, self.local_experts
        counts_E = routing.counts_E.to(torch.int64)
        # 1. how many slots each rank sends to / receives from each local expert
        recv_counts = torch.empty_like(counts_E)
        dist.all_to_all_single(recv_counts, counts_E, group=self.ep_group)
        send_splits = counts_E.view(ep, local_e).sum(1).tolist()
        recv_counts_RE = recv_counts.view(ep, local_e)  # [source rank, local expert]
        recv_splits = recv_counts_RE.sum(1).tolist()
        # 2. dispatch the rows
        recv_ND = all_to_all_single_autograd(x_ND.contiguous(), recv_splits, send_splits, self.ep_group)
        # 3. source-rank-major -> local-expert-major (stable: keeps each source's order within an expert)
        expert_of_row = torch.repeat_interleave(
            torch.arange(local_e, device=x_ND.device).repeat(ep), recv_counts_RE.flatten().to(x_ND.device))
        order = torch.argsort(expert_of_row, stable=True)
        gate_up = self._local_weight(self.gate_up_proj, x_ND.dtype)
        down = self._local_weight(self.down_proj, x_ND.dtype)
        out_sorted = expert_math(self.backend, recv_ND[order], gate_up, down, recv_counts_RE.sum(0))
        out_recv = torch.empty_like(out_sorted).index_copy(0, order, out_sorted)
        # 4. send results home
        return all_to_all_single_autograd(out_recv.contiguous(), send_splits, recv_splits, self.ep_group)
