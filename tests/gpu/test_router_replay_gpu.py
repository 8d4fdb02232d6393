"""Router replay on the GPU experts backends (marker `gpu`; `make test-gpu`). The replay happens before the expert
sort, so megablocks' grouped GEMMs must receive exactly the given experts: checked against the CPU fp32 reference
block replaying the same indices (bf16 tolerances of test_backends_gpu.py), and replaying a GPU forward's own
recorded choices must reproduce it bit for bit on the same device.

NORTH_GPU_TESTS_DEVICE=cpu dry-runs the `grouped` case on the CPU (megablocks is CUDA only)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from helpers import require
from north_lightning.model import NorthConfig
from north_lightning.model.moe import MoEBlock

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("NORTH_GPU_TESTS_DEVICE", "cuda")
CFG = NorthConfig(hidden_size=1024, num_experts=128, num_experts_per_tok=8, expert_intermediate_size=512,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=128, router_aux_loss_coef=0.0)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float().cpu() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize("backend", ["grouped", "megablocks"])
def test_replayed_experts_reach_the_gpu_backend(backend: str) -> None:
    require(DEVICE != "cuda" or torch.cuda.is_available(), "no CUDA device")
    if backend == "megablocks" and (DEVICE != "cuda" or importlib.util.find_spec("megablocks") is None
                                    or importlib.util.find_spec("grouped_gemm") is None):
        pytest.skip("megablocks needs CUDA and megablocks + grouped_gemm (pip install --no-deps megablocks "
                    "stanford-stk grouped_gemm)")
    torch.manual_seed(0)
    ref = MoEBlock(CFG.replace(experts_backend="torch"), layer=1)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_((torch.randn_like(p) * 0.02).to(torch.bfloat16).float())
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    gpu = MoEBlock(CFG.replace(experts_backend=backend), layer=1).to(DEVICE, dtype)
    gpu.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})

    T, K, E = 2048, CFG.num_experts_per_tok, CFG.num_experts
    x_TD = torch.randn(T, CFG.hidden_size).to(torch.bfloat16).float()
    given_TK = torch.rand(T, E, generator=torch.Generator().manual_seed(1)).argsort(-1)[:, :K]
    grad_TD = torch.randn(T, CFG.hidden_size).to(torch.bfloat16).float()

    x_ref = x_TD.clone().requires_grad_()
    out_ref = ref(x_ref[None], given_TK)[0]
    out_ref.backward(grad_TD)

    counts = {}
    gpu.experts.register_forward_hook(lambda mod, args, out: counts.update(E=args[1].counts_E.cpu()))
    x_gpu = x_TD.to(DEVICE, dtype).requires_grad_()
    out_gpu = gpu(x_gpu[None], given_TK.to(DEVICE))[0]
    out_gpu.backward(grad_TD.to(DEVICE, dtype))
    assert torch.equal(counts["E"], torch.bincount(given_TK.flatten(), minlength=E))
    assert torch.equal(gpu.last_expert_idx_TK.cpu().long(), given_TK)
    assert rel_err(out_gpu, out_ref) < 2e-2
    assert rel_err(x_gpu.grad, x_ref.grad) < 2e-2
    assert rel_err(gpu.gate.weight.grad, ref.gate.weight.grad) < 2e-2  # the router's gradient through the gates
    for name in ("gate_up_proj", "down_proj"):
        assert rel_err(getattr(gpu.experts, name).grad, getattr(ref.experts, name).grad) < 2e-2, name

    with torch.no_grad():  # own routing, recorded and replayed on the same device: identical
        own = gpu(x_TD.to(DEVICE, dtype)[None])
        replayed = gpu(x_TD.to(DEVICE, dtype)[None], gpu.last_expert_idx_TK.clone())
    assert torch.equal(own, replayed)
