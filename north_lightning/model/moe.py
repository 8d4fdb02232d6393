"""Mixture-of-experts block: our router + a pluggable experts backend (`NorthConfig.experts_backend`).

Router (North/Cohere2MoE): top-k of the router logits, weights = sigmoid of the selected logits, no
renormalisation (unless `norm_topk_prob`). Because sigmoid is monotonic this selects the same experts as vLLM's
"sigmoid then top-k". Every backend receives the same routing and computes SwiGLU experts with weights stored
in transformers-v5's fused layout (`gate_up_proj` [E, 2F, D], gate rows first; `down_proj` [E, D, F]), so the
checkpoint mapping to HF/vLLM is the same whichever backend trains.

Experts backends take tokens sorted by expert (`ExpertRouting`) and return the weighted per-slot outputs in the
same sorted order; the block scatters them back with `index_add_`. `megablocks` is imported only when asked for.

Router replay (RL, MoE): the block can route with given per-token expert indices (`routed_experts_TK`, e.g. the
experts the sampler chose when it generated the tokens) instead of its own top-k, so the trainer computes the
policy that actually produced the samples even where a small numerical difference flips a near-tie in the
router. Gradient treatment: the *choice* is fixed (indices are data, no gradient), but the gate values are still
the router's own sigmoid scores, gathered at the given indices (and renormalised when `norm_topk_prob`, as in
normal routing). So the router gets gradient through the replayed experts' gate weights exactly as it would
through its own top-k (replaying our own choices gives the same logits and gradients bit for bit); the task loss
gives it none for experts it would have chosen but the replay did not use. The load-balancing loss uses the
routed fraction f of the *replayed* choices (what the experts actually computed) and the router's own scores P
(all E of them, which carry its gradient), so it still pushes the router toward balance, measured on the
sampler's routing. Replay is per token: a row of -1 (padding, tokens the engine returned no routing for) falls
back to the router's own top-k. Replay happens before the expert sort, so every backend (torch, grouped,
megablocks, expert-parallel) consumes it unchanged. `last_expert_idx_TK` records the choice of the last forward
(own or replayed; uint8, as vLLM returns them) for storing and replaying later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from north_lightning.model.attention import load_backend
from north_lightning.model.config import NorthConfig

EXPERTS_BACKENDS: dict[str, str] = {
    "torch": "north_lightning.model.moe:TorchExperts",
    "grouped": "north_lightning.model.moe:GroupedExperts",
    "megablocks": "north_lightning.model.experts_megablocks:MegablocksExperts",
}


@dataclass
class ExpertRouting:
    """Routed slots (T tokens x K choices) sorted by expert, ready for per-expert segments / grouped GEMMs."""

    token_idx_N: torch.Tensor  # N = T*K: source token of each sorted slot
    weight_N: torch.Tensor  # router weight of each sorted slot
    counts_E: torch.Tensor  # slots per expert (int64, on the tokens' device)
    expert_idx_TK: torch.Tensor  # unsorted choices, for backends (e.g. megablocks) that route themselves
    weight_TK: torch.Tensor


class TorchExperts(nn.Module):
    """Reference backend: one matmul pair per expert over that expert's contiguous segment of sorted tokens.
    A Python loop over experts (not tokens); clear, and exact against the grouped kernels."""

    def __init__(self, config: NorthConfig) -> None:
        super().__init__()
        E, F_, D = config.num_experts, config.expert_intermediate_size, config.hidden_size
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * F_, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, F_))

    def forward(self, x_ND: torch.Tensor, routing: ExpertRouting) -> torch.Tensor:
        # unbind once: indexing `w[e]` per expert would make autograd build a full-size zero gradient for
        # every expert in the backward (E x the weight's size in memory traffic).
        gate_up_w, down_w = self.gate_up_proj.unbind(0), self.down_proj.unbind(0)
        outs = []
        for e, x_nD in enumerate(x_ND.split(routing.counts_E.tolist())):
            if x_nD.shape[0] == 0:
                continue
            gate_nF, up_nF = F.linear(x_nD, gate_up_w[e]).chunk(2, dim=-1)
            outs.append(F.linear(F.silu(gate_nF) * up_nF, down_w[e]))
        return torch.cat(outs) if outs else x_ND.new_zeros(0, self.down_proj.shape[1])


class GroupedExperts(TorchExperts):
    """One grouped GEMM per projection over all experts' segments (`grouped_mm` with cumulative offsets).
    Runs on CPU (torch >= 2.10) and CUDA; same parameters as `TorchExperts`. The weights are passed as
    transposed views ([E, in, out], column-major), the layout CUDA grouped-GEMM kernels prefer; on the CPU
    `grouped_mm` loops over BLAS `mm` calls, which take the transpose as a flag (a contiguous copy only costs)."""

    def forward(self, x_ND: torch.Tensor, routing: ExpertRouting) -> torch.Tensor:
        offs_E = routing.counts_E.cumsum(0).to(torch.int32)
        gate_up_N2F = _grouped_mm(x_ND, self.gate_up_proj.transpose(-2, -1), offs_E)
        gate_NF, up_NF = gate_up_N2F.chunk(2, dim=-1)
        return _grouped_mm(F.silu(gate_NF) * up_NF, self.down_proj.transpose(-2, -1), offs_E)


def _grouped_mm(a_ND: torch.Tensor, b_EIO: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm
    return grouped_mm(a_ND, b_EIO, offs=offs_E)


class TopKRouter(nn.Module):
    """Linear router: selects by logits, weights by sigmoid; keeps the statistics of its last forward."""

    def __init__(self, config: NorthConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob

    def forward(self, x_TD: torch.Tensor, routed_experts_TK: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits [T, E], chosen experts [T, K] and their gate weights [T, K]. With `routed_experts_TK`
        (validated by `check_routed_experts`; rows of -1 route themselves) the choice is the given one and the
        weights are the sigmoid of this router's logits at those experts (see the module docstring)."""
        logits_TE = F.linear(x_TD, self.weight)
        top_logits_TK, expert_idx_TK = torch.topk(logits_TE, self.top_k, dim=-1)
        if routed_experts_TK is not None:
            replay_T1 = (routed_experts_TK >= 0).all(-1, keepdim=True)
            expert_idx_TK = torch.where(replay_T1, routed_experts_TK.to(expert_idx_TK.dtype), expert_idx_TK)
            top_logits_TK = logits_TE.gather(-1, expert_idx_TK)
        weight_TK = torch.sigmoid(top_logits_TK.float())
        if self.norm_topk_prob:
            weight_TK = weight_TK / weight_TK.sum(-1, keepdim=True)
        return logits_TE, expert_idx_TK, weight_TK.to(x_TD.dtype)


class MoEBlock(nn.Module):
    """Router + experts. After each forward, `aux_loss` (coefficient applied) and `expert_load_E` (fraction of
    routed slots per expert, detached) describe that forward for logging and the load-balancing loss."""

    def __init__(self, config: NorthConfig, layer: int | None = None) -> None:
        super().__init__()
        self.layer = layer  # decoder layer index, for error messages
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.aux_loss_coef = config.router_aux_loss_coef
        self.gate = TopKRouter(config)
        self.experts = load_backend(EXPERTS_BACKENDS, config.experts_backend, "experts")(config)
        self.aux_loss: torch.Tensor | None = None
        self.expert_load_E: torch.Tensor | None = None
        # the experts of the last forward (own or replayed), compact as vLLM returns them: 1-2 bytes per entry
        # (int64 would hold ~0.4 GB at 128K tokens x 47 layers x top-8 between forwards)
        self.record_dtype = torch.uint8 if config.num_experts <= 256 else torch.int16
        self.last_expert_idx_TK: torch.Tensor | None = None

    def forward(self, x_BSD: torch.Tensor, routed_experts_TK: torch.Tensor | None = None) -> torch.Tensor:
        """`routed_experts_TK`: optional [T, K] (or [B, S, K]) expert indices to replay (module docstring)."""
        x_TD = x_BSD.reshape(-1, x_BSD.shape[-1])
        if routed_experts_TK is not None:
            routed_experts_TK = check_routed_experts(routed_experts_TK, x_TD.shape[0], self.top_k,
                                                     self.num_experts, f"MoE layer {self.layer}")
        logits_TE, expert_idx_TK, weight_TK = self.gate(x_TD, routed_experts_TK)
        self.last_expert_idx_TK = expert_idx_TK.detach().to(self.record_dtype)
        routing = sort_by_expert(expert_idx_TK, weight_TK, self.num_experts)
        self._record_stats(logits_TE, routing.counts_E)
        out_ND = self.experts(x_TD[routing.token_idx_N], routing)
        out_ND = out_ND * routing.weight_N[:, None]
        out_TD = torch.zeros_like(x_TD).index_add_(0, routing.token_idx_N, out_ND.to(x_TD.dtype))
        return out_TD.view_as(x_BSD)

    def _record_stats(self, logits_TE: torch.Tensor, counts_E: torch.Tensor) -> None:
        """Switch-style balance loss E * sum_e f_e * P_e, with P the per-token-normalised sigmoid scores (1.0
        when perfectly balanced). f (the routed fraction) carries no gradient; P does."""
        load_E = counts_E.to(torch.float32) / counts_E.sum().clamp(min=1)
        self.expert_load_E = load_E.detach()
        if self.aux_loss_coef > 0 and self.training and torch.is_grad_enabled():
            scores_TE = torch.sigmoid(logits_TE.float())
            prob_E = (scores_TE / scores_TE.sum(-1, keepdim=True)).mean(0)
            self.aux_loss = self.aux_loss_coef * self.num_experts * (load_E * prob_E).sum()
        else:
            self.aux_loss = None


def check_routed_experts(routed_TK: torch.Tensor, num_tokens: int, top_k: int, num_experts: int,
                         where: str) -> torch.Tensor:
    """`routed_TK` as a [T, K] int64 tensor, or a ValueError naming `where` (the layer): shape, dtype, range
    [0, E) (a row of -1 = no replay for that token) and no expert twice for one token. The checks read the
    values (one device sync per layer): a bad index would otherwise fail far away, inside a kernel, or silently
    route a token twice through one expert."""
    if not isinstance(routed_TK, torch.Tensor) or routed_TK.is_floating_point() or routed_TK.is_complex() \
            or routed_TK.dtype == torch.bool:
        raise ValueError(f"{where}: routed_experts must be an integer tensor, got "
                         f"{getattr(routed_TK, 'dtype', type(routed_TK).__name__)}")
    if routed_TK.shape[-1:] != (top_k,) or routed_TK.numel() != num_tokens * top_k:
        raise ValueError(f"{where}: routed_experts has shape {tuple(routed_TK.shape)}, expected [{num_tokens}, "
                         f"{top_k}] (tokens x top_k) or a [batch, seq, {top_k}] view of it")
    routed_TK = routed_TK.reshape(num_tokens, top_k).long()  # signed: a uint8 255 is not a -1
    if routed_TK.numel() == 0:
        return routed_TK
    own_T1 = (routed_TK == -1).all(-1, keepdim=True)
    out_of_range_TK = ((routed_TK < 0) | (routed_TK >= num_experts)) & ~own_T1
    sorted_TK = routed_TK.sort(-1).values
    repeated_T = (sorted_TK[:, 1:] == sorted_TK[:, :-1]).any(-1) & ~own_T1[:, 0]
    if not bool(out_of_range_TK.any() | repeated_T.any()):  # the one sync of the happy path
        return routed_TK
    if bool(out_of_range_TK.any()):
        raise ValueError(f"{where}: routed_experts holds expert index {int(routed_TK[out_of_range_TK][0])} outside "
                         f"[0, {num_experts}) (a token that should route itself needs a whole row of -1)")
    raise ValueError(f"{where}: routed_experts names the same expert twice for token {int(repeated_T.nonzero()[0])}")


def sort_by_expert(expert_idx_TK: torch.Tensor, weight_TK: torch.Tensor, num_experts: int) -> ExpertRouting:
    """Stable sort of the T*K routed slots by expert id (ties keep token order, so results are deterministic)."""
    flat_expert_N = expert_idx_TK.flatten()
    order_N = torch.argsort(flat_expert_N, stable=True)
    return ExpertRouting(
        token_idx_N=order_N // expert_idx_TK.shape[1],
        weight_N=weight_TK.flatten()[order_N],
        counts_E=torch.bincount(flat_expert_N, minlength=num_experts),
        expert_idx_TK=expert_idx_TK,
        weight_TK=weight_TK,
    )


class DenseMLP(nn.Module):
    """SwiGLU MLP of the dense prefix layer(s); HF names gate_proj / up_proj / down_proj."""

    def __init__(self, config: NorthConfig) -> None:
        super().__init__()
        D, F_ = config.hidden_size, config.dense_intermediate_size
        self.gate_proj = nn.Linear(D, F_, bias=False)
        self.up_proj = nn.Linear(D, F_, bias=False)
        self.down_proj = nn.Linear(F_, D, bias=False)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x_BSD)) * self.up_proj(x_BSD))
