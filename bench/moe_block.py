"""MoE block forward+backward: our block (torch and grouped experts) vs transformers' Cohere2MoeSparseMoeBlock.

Same weights (the parameters are shared, not copied) and the same tokens, North routing (128 experts, top-8,
sigmoid weights without renormalisation, hidden 2048, expert FFN 768). The baseline is the block as transformers
runs it inside `Cohere2MoeForCausalLM` (5.x selects its `grouped_mm` experts implementation, on CPU too).
`--hf-eager` also times the block's own eager loop (what a standalone block runs), which is pathologically slow
in the backward and takes minutes. Outputs and gradients are checked against transformers before timing.

Last line: `torch_vs_hf=... grouped_vs_hf=... tokens=... device=...` (ratios > 1: ours faster).
"""

from __future__ import annotations

import argparse
import time

import torch


def build(args: argparse.Namespace):
    from transformers import Cohere2MoeConfig
    from transformers.models.cohere2_moe.modeling_cohere2_moe import Cohere2MoeSparseMoeBlock

    from north_lightning.model import NorthConfig
    from north_lightning.model.moe import MoEBlock

    hf_config = Cohere2MoeConfig(hidden_size=args.hidden, intermediate_size=args.ffn, num_experts=args.experts,
                                 num_experts_per_tok=args.top_k, expert_selection_fn="sigmoid", norm_topk_prob=False,
                                 num_hidden_layers=1, num_attention_heads=16, vocab_size=256)
    hf_block = Cohere2MoeSparseMoeBlock(hf_config).to(args.device, args.dtype)
    with torch.no_grad():
        for p in hf_block.parameters():
            p.normal_(0.0, 0.02)
    cfg = NorthConfig(hidden_size=args.hidden, expert_intermediate_size=args.ffn, num_experts=args.experts,
                      num_experts_per_tok=args.top_k, router_aux_loss_coef=0.0, vocab_size=256,
                      num_attention_heads=16, num_key_value_heads=16, head_dim=args.hidden // 16)
    ours = {}
    for backend in ("torch", "grouped"):
        with torch.device("meta"):
            block = MoEBlock(cfg.replace(experts_backend=backend))
        # share the very same Parameter objects: identical weights and half the memory
        block.gate.weight = hf_block.gate.weight
        block.experts.gate_up_proj = hf_block.experts.gate_up_proj
        block.experts.down_proj = hf_block.experts.down_proj
        ours[backend] = block
    return hf_config, hf_block, ours


def fwd_bwd(block, x_BSD: torch.Tensor, grad_BSD: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for p in block.parameters():
        p.grad = None
    x = x_BSD.detach().requires_grad_()
    out = block(x)
    out.backward(grad_BSD)
    return out.detach(), [x.grad] + [p.grad for p in block.parameters()]


def timed(block, x_BSD, grad_BSD, iters: int, device: str, name: str) -> float:
    """Best of `iters` timed fwd+bwd runs (the correctness pass before serves as the warm-up)."""
    times = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fwd_bwd(block, x_BSD, grad_BSD)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(f"{name}: {min(times):.3f} s per fwd+bwd", flush=True)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=768)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--iters", type=int, default=1)
    parser.add_argument("--hf-eager", action="store_true",
                        help="also time the block's own eager experts loop (minutes: its backward materialises a "
                             "full-size zero gradient of all expert weights per expert)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "bfloat16"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    hf_config, hf_block, ours = build(args)
    x_BSD = torch.randn(1, args.tokens, args.hidden, device=args.device, dtype=args.dtype)
    grad_BSD = torch.randn_like(x_BSD)

    # correctness first (doubles as the warm-up): same outputs and gradients as transformers
    hf_config._experts_implementation = "grouped_mm"
    ref_out, ref_grads = fwd_bwd(hf_block, x_BSD, grad_BSD)
    tol = 1e-4 if args.dtype == torch.float32 else 5e-2
    for name, block in ours.items():
        out, grads = fwd_bwd(block, x_BSD, grad_BSD)
        err = max((out - ref_out).abs().max().item(), *((g - r).abs().max().item() for g, r in zip(grads, ref_grads)))
        scale = max(ref_out.abs().max().item(), 1e-6)
        print(f"{name}: max abs diff vs transformers (output and grads) {err:.2e} (output scale {scale:.2e})", flush=True)
        if err > tol * max(1.0, scale):
            raise SystemExit(f"{name} experts disagree with transformers: {err}")

    t_hf = timed(hf_block, x_BSD, grad_BSD, args.iters, args.device, "hf_grouped_mm")
    t_torch = timed(ours["torch"], x_BSD, grad_BSD, args.iters, args.device, "ours_torch")
    t_grouped = timed(ours["grouped"], x_BSD, grad_BSD, args.iters, args.device, "ours_grouped")
    figures = f"torch_vs_hf={t_hf / t_torch:.2f} grouped_vs_hf={t_hf / t_grouped:.2f}"
    if args.hf_eager:
        hf_config._experts_implementation = "eager"
        t_eager = timed(hf_block, x_BSD, grad_BSD, 1, args.device, "hf_eager")
        figures += f" torch_vs_hf_eager={t_eager / t_torch:.2f} grouped_vs_hf_eager={t_eager / t_grouped:.2f}"
    print(f"{figures} tokens={args.tokens} device={args.device}")


if __name__ == "__main__":
    main()
