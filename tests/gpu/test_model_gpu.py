"""Whole-model GPU checks (marker `gpu`).

1. A reduced-depth North-width model (hidden 2048, 32/4 heads of 128, 128 experts top-8, expert FFN 768, the
   262,144-token vocabulary; 5 layers: dense+full, 3 sliding MoE, 1 global MoE; window 128 so it binds at
   S=512) in bf16 on the GPU with flash or flex attention and grouped experts, against the same weights in
   fp32 on the CPU (sdpa + reference experts). Tolerances: bf16 router logits can flip a near-tie expert choice
   for a few tokens, so per-token log-probabilities are compared by their distribution: median |dlogp| < 0.02
   and mean < 0.05 nats; the loss gradient of every parameter tensor has relative norm error < 0.25, the
   routers' < 0.5 (pure-bf16 activations through 5 layers: a CPU bf16 dry run of the tiny shape measured up to
   0.10 on expert weights and router weights; a wrong kernel gives errors of order 1).
2. `parallelize_north` on a real NCCL process group (world size 1: what one lent GPU allows) trains the tiny model
   with FSDP2 bf16 + activation checkpointing.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

from helpers import require
from north_lightning.model import NorthConfig, NorthForCausalLM

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("NORTH_GPU_TESTS_DEVICE", "cuda")


@pytest.fixture(autouse=True)
def _cuda() -> None:
    require(DEVICE != "cuda" or torch.cuda.is_available(), "no CUDA device")


def north_width(**overrides) -> NorthConfig:
    return NorthConfig.preset("north_mini_code_30b", num_hidden_layers=5, sliding_window=128,
                              router_aux_loss_coef=0.0, **overrides)


def packed_batch(S: int = 512) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 262144, (1, S), generator=gen)
    doc = torch.zeros(1, S, dtype=torch.long)
    doc[:, 300:] = 1
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    targets[:, 299] = -100
    return {"input_ids": ids, "document_ids": doc, "targets": targets}


@pytest.fixture(scope="module")
def cpu_reference() -> dict:
    """fp32 CPU model, its per-token log-probabilities and gradients; computed once for both attention backends."""
    torch.manual_seed(0)
    ref = NorthForCausalLM(north_width())
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # both sides start from bf16-representable weights
    batch = packed_batch()
    logp, _ = ref.token_logprobs(batch["input_ids"], batch["targets"], document_ids=batch["document_ids"])
    (-logp.sum()).backward()
    return {"state": {k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()}, "batch": batch,
            "logp": logp.detach(), "grads": {n: p.grad for n, p in ref.named_parameters()}}


@pytest.mark.parametrize("attn", ["flash", "flex"])
def test_north_width_model_bf16_gpu_vs_fp32_cpu(attn: str, cpu_reference: dict) -> None:
    try:
        with torch.device("meta"):
            gpu = NorthForCausalLM(north_width(attn_backend=attn, experts_backend="grouped"))
    except ImportError as exc:
        pytest.skip(str(exc))
    gpu = gpu.to_empty(device=DEVICE).to(torch.bfloat16)
    gpu.load_state_dict(cpu_reference["state"])
    batch = cpu_reference["batch"]
    on_dev = {k: v.to(DEVICE) for k, v in batch.items()}
    logp_gpu, _ = gpu.token_logprobs(on_dev["input_ids"], on_dev["targets"], document_ids=on_dev["document_ids"])
    (-logp_gpu.sum()).backward()

    diff = (logp_gpu.detach().float().cpu() - cpu_reference["logp"]).abs()[batch["targets"] != -100]
    assert float(diff.median()) < 0.02 and float(diff.mean()) < 0.05, (float(diff.median()), float(diff.mean()))
    for name, p in gpu.named_parameters():
        want = cpu_reference["grads"][name]
        err = float((p.grad.float().cpu() - want).norm() / want.norm().clamp_min(1e-12))
        tol = 0.5 if name.endswith("mlp.gate.weight") else 0.25
        assert err < tol, f"d{name}: relative error {err:.3f}"


def test_parallelize_on_nccl_single_rank() -> None:
    import torch.distributed as dist

    from north_lightning.model.parallelize import parallelize_north

    require(DEVICE == "cuda", "NCCL needs CUDA")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = NorthForCausalLM(NorthConfig.preset("tiny", experts_backend="grouped")).cuda()
        parallelize_north(model, ep=1, activation_checkpointing=True, param_dtype="bfloat16")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(3, 4096, (2, 256), device="cuda")
        targets = torch.roll(ids, -1, dims=1)
        losses = []
        for _ in range(3):
            logp, _ = model.token_logprobs(ids, targets)
            loss = -logp.mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss))
        assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    finally:
        dist.destroy_process_group()
