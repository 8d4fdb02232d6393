"""GPU backends against the CPU float32 reference (marker `gpu`: run by `make test-gpu` / scripts/test_gpu.sh).

Inputs are drawn in float32, rounded to bf16 once, and that same bf16-representable data feeds both the GPU
backend (bf16) and the CPU reference (fp32), so the comparison measures the kernels' bf16 arithmetic only.
Tolerances (relative Frobenius error ||gpu - ref|| / ||ref||): attention outputs and q/k/v gradients < 2e-2,
expert outputs and gradients < 2e-2 (bf16 has an 8-bit mantissa: ~4e-3 per rounding, accumulated over
d=128 / D=2048 reductions in fp32). The max-abs error is also bounded by 10% of the reference's max.
The Liger fused linear cross-entropy is checked against our chunked head (fp32 logits) on the GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest
import torch

from helpers import require
from north_lightning.model import NorthConfig
from north_lightning.model.attention import SDPAAttention, SequenceLayout, load_backend
from north_lightning.model.moe import EXPERTS_BACKENDS, MoEBlock, sort_by_expert

pytestmark = pytest.mark.gpu
# NORTH_GPU_TESTS_DEVICE=cpu dry-runs the test code itself on the CPU (where a backend supports it).
DEVICE = os.environ.get("NORTH_GPU_TESTS_DEVICE", "cuda")


@pytest.fixture(autouse=True)
def _cuda() -> None:
    require(DEVICE != "cuda" or torch.cuda.is_available(), "no CUDA device")
    torch.manual_seed(0)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float().cpu() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


def assert_close_bf16(got: torch.Tensor, ref: torch.Tensor, name: str, tol: float = 2e-2) -> None:
    err = rel_err(got, ref)
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"
    max_abs = float((got.float().cpu() - ref.float()).abs().max())
    assert max_abs <= 0.1 * float(ref.abs().max()) + 1e-3, f"{name}: max abs error {max_abs:.3e}"


def packed_qkv(B: int = 2, S: int = 1024, H: int = 32, G: int = 4, d: int = 128):
    q, k, v = (torch.randn(B, S, n, d).to(torch.bfloat16).float() for n in (H, G, G))
    doc_BS = torch.zeros(B, S, dtype=torch.long)
    doc_BS[0, 300:], doc_BS[0, 700:], doc_BS[1, 512:] = 1, 2, 1
    return q, k, v, doc_BS


def attention_case(backend_cls, window: int | None, **kwargs) -> None:
    q, k, v, doc_BS = packed_qkv()
    scale = q.shape[-1] ** -0.5
    grad_out = torch.randn(*q.shape).to(torch.bfloat16).float()
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = SDPAAttention(scale)(*ref_in, SequenceLayout(*doc_BS.shape, doc_BS), window)
    ref.backward(grad_out)
    gpu_in = [t.to(DEVICE).to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = backend_cls(scale, **kwargs)(*gpu_in, SequenceLayout(*doc_BS.shape, doc_BS.to(DEVICE)), window)
    out.backward(grad_out.to(DEVICE).to(torch.bfloat16))
    assert_close_bf16(out, ref, "out")
    for name, got, want in zip("qkv", gpu_in, ref_in):
        assert_close_bf16(got.grad, want.grad, f"d{name}")


FLASH_IMPLS = {"fa4": "flash_attn.cute", "fa2": "flash_attn", "torch": "torch.nn.attention.varlen"}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("window", [None, 256])
@pytest.mark.parametrize("impl", list(FLASH_IMPLS))
def test_flash_varlen_matches_reference(impl: str, window: int | None) -> None:
    from north_lightning.model.attention_flash import FlashAttention

    if not _has_module(FLASH_IMPLS[impl]):
        pytest.skip(f"{FLASH_IMPLS[impl]} not installed on this GPU machine")
    attention_case(FlashAttention, window, impl=impl)


@pytest.mark.parametrize("window", [None, 256])
def test_flex_matches_reference(window: int | None) -> None:
    from north_lightning.model.attention_flex import FlexAttention

    attention_case(FlexAttention, window)


def moe_case(backend: str) -> None:
    """The experts backend alone on one fixed routing (computed once, on the CPU, from fp32 router logits), so a
    bf16 near-tie in the router cannot make the two sides compute different experts."""
    cfg = NorthConfig(hidden_size=2048, num_experts=128, num_experts_per_tok=8, expert_intermediate_size=768,
                      num_attention_heads=16, num_key_value_heads=4, head_dim=128, router_aux_loss_coef=0.0)
    block = MoEBlock(cfg.replace(experts_backend="torch"))
    with torch.no_grad():
        for p in block.parameters():
            p.copy_((torch.randn_like(p) * 0.02).to(torch.bfloat16).float())
    x_TD = torch.randn(1024, 2048).to(torch.bfloat16).float()
    _, expert_idx_TK, weight_TK = block.gate(x_TD)
    routing = sort_by_expert(expert_idx_TK, weight_TK.detach(), cfg.num_experts)
    x_ND = x_TD[routing.token_idx_N]
    grad_ND = torch.randn(x_ND.shape[0], 2048).to(torch.bfloat16).float()

    ref_experts = block.experts
    x_ref = x_ND.clone().requires_grad_()
    ref = ref_experts(x_ref, routing)
    ref.backward(grad_ND)

    gpu_experts = load_backend(EXPERTS_BACKENDS, backend, "experts")(cfg).to(DEVICE).to(torch.bfloat16)
    gpu_experts.load_state_dict({k: v.to(torch.bfloat16) for k, v in ref_experts.state_dict().items()})
    gpu_routing = dataclasses.replace(routing, **{f.name: getattr(routing, f.name).to(DEVICE)
                                                 for f in dataclasses.fields(routing)})
    x_gpu = x_ND.to(DEVICE).to(torch.bfloat16).requires_grad_()
    out = gpu_experts(x_gpu, gpu_routing)
    out.backward(grad_ND.to(DEVICE).to(torch.bfloat16))
    assert_close_bf16(out, ref, "out")
    assert_close_bf16(x_gpu.grad, x_ref.grad, "dx")
    for name in ("gate_up_proj", "down_proj"):
        assert_close_bf16(getattr(gpu_experts, name).grad, getattr(ref_experts, name).grad, f"d{name}")


def test_grouped_experts_match_reference() -> None:
    moe_case("grouped")


def test_megablocks_experts_match_reference() -> None:
    if not _has_module("megablocks") or not _has_module("grouped_gemm"):
        pytest.skip("megablocks/grouped_gemm absent (pip install --no-deps megablocks stanford-stk grouped_gemm)")
    moe_case("megablocks")


def test_liger_loss_and_grads_match_chunked_head() -> None:
    """`loss_impl="liger"` against our chunked head on the same bf16 inputs at North's head shape (D=2048, the
    262,144-token vocabulary, logit_scale 0.7 so the hidden-state scaling is exercised, ~10% ignored targets),
    for both reductions SFTModule may use. The chunked head computes logits in fp32, Liger in bf16, so: loss
    relative error < 1e-3; d(hidden) and d(weight) within the bf16 tolerances above (relative Frobenius < 2e-2).
    Then the SFT loss (`masked_nll_sum`) of a tiny fp32 model is the same whichever head computes it (< 1e-4)."""
    require(_has_module("liger_kernel"), "liger_kernel is not installed on this GPU machine (pip install liger-kernel)")
    from north_lightning.model import NorthForCausalLM
    from north_lightning.model.head import chunked_cross_entropy, liger_cross_entropy
    from north_lightning.modules.sft import masked_nll_sum

    N, D, V, scale = 2048, 2048, 262144, 0.7
    hidden = torch.randn(1, N, D).to(DEVICE, torch.bfloat16)
    weight = (torch.randn(V, D) * 0.02).to(DEVICE, torch.bfloat16)
    targets = torch.randint(0, V, (1, N))
    targets[torch.rand(1, N) < 0.1] = -100
    targets = targets.to(DEVICE)
    for reduction in ("sum", "mean"):
        results = {}
        for name, fn in (("chunked", lambda h, w: chunked_cross_entropy(h, w, targets, scale=scale,
                                                                        reduction=reduction)),
                         ("liger", lambda h, w: liger_cross_entropy(h, w, targets, scale=scale, reduction=reduction))):
            h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
            loss = fn(h, w)
            loss.backward()
            results[name] = (loss.detach().float().cpu(), h.grad.float().cpu(), w.grad.float().cpu())
            del h, w, loss
            torch.cuda.empty_cache()
        (ref_loss, ref_dh, ref_dw), (loss, dh, dw) = results["chunked"], results["liger"]
        assert abs(float(loss - ref_loss)) < 1e-3 * abs(float(ref_loss)), f"{reduction}: {loss} vs {ref_loss}"
        assert_close_bf16(dh, ref_dh, f"{reduction} d(hidden)")
        assert_close_bf16(dw, ref_dw, f"{reduction} d(weight)")

    model = NorthForCausalLM(NorthConfig.preset("tiny", num_hidden_layers=2, logit_scale=0.7)).to(DEVICE)
    ids = torch.randint(3, 4096, (2, 64), device=DEVICE)
    tgt = ids.roll(-1, dims=1)
    tgt[:, :10] = -100
    batch = {"input_ids": ids, "targets": tgt}
    sums = {}
    for impl in ("chunked", "liger"):
        model.config = model.config.replace(loss_impl=impl)
        sums[impl], n = masked_nll_sum(model, batch)
    assert int(n) == 2 * 54
    assert abs(float(sums["liger"] - sums["chunked"])) < 1e-4 * abs(float(sums["chunked"]))
