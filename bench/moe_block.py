"""MoE block forward+backward: our block (torch, grouped, megablocks experts) vs transformers' Cohere2MoeSparseMoeBlock.

Same weights (the parameters are shared, not copied) and the same tokens, North routing (128 experts, top-8,
sigmoid weights without renormalisation, hidden 2048, expert FFN 768). The baseline is the block as transformers
runs it inside `Cohere2MoeForCausalLM` (5.x selects its `grouped_mm` experts implementation, on CPU too).
`--hf-eager` also times the block's own eager loop (what a standalone block runs), which is pathologically slow
in the backward and takes minutes. Outputs and gradients are checked against transformers before timing.

`--device cuda` (bf16) also measures the `megablocks` experts backend (grouped GEMM, CUDA only) when megablocks
imports; otherwise the last line says `megablocks=unavailable(<reason>)`. A backend that disagrees with
transformers (`<name>=wrong`) or imports but fails when run (`<name>=failed(<reason>)`) is reported, left out
of the timing, and makes the script exit non-zero after the last line. Stopped by `timeout` (SIGTERM), it still
prints what it measured, with `interrupted=1`.

    python bench/moe_block.py --device cuda     # North width, 4096 tokens, bf16: torch, grouped, megablocks
    python bench/moe_block.py --device cpu --tokens 64 --hidden 128 --ffn 32 --experts 8 --top-k 2   # dry run

Last line: `torch_vs_hf=... grouped_vs_hf=... [megablocks_vs_hf=...] tokens=... device=...` (ratios > 1: ours
faster).
"""

from __future__ import annotations

import argparse
import re
import signal
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
    ours, unavailable = {}, {}
    for backend in args.backends.split(","):
        try:
            with torch.device("meta"):
                block = MoEBlock(cfg.replace(experts_backend=backend))
        except ImportError as exc:  # reported on the last line, never replaced by another backend
            unavailable[backend] = exc
            continue
        # share the very same Parameter objects: identical weights and half the memory
        block.gate.weight = hf_block.gate.weight
        block.experts.gate_up_proj = hf_block.experts.gate_up_proj
        block.experts.down_proj = hf_block.experts.down_proj
        ours[backend] = block
    return hf_config, hf_block, ours, unavailable


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
    parser.add_argument("--backends", default=None,
                        help="our experts backends to compare (default: torch,grouped,megablocks on cuda; "
                             "torch,grouped on cpu, where megablocks can only report itself unavailable)")
    args = parser.parse_args()
    args.backends = args.backends or ("torch,grouped,megablocks" if args.device == "cuda" else "torch,grouped")
    args.dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "bfloat16"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    hf_config, hf_block, ours, unavailable = build(args)
    x_BSD = torch.randn(1, args.tokens, args.hidden, device=args.device, dtype=args.dtype)
    grad_BSD = torch.randn_like(x_BSD)
    notes = {name: f"unavailable({_short(exc)})" for name, exc in unavailable.items()}
    for name, exc in unavailable.items():
        print(f"{name}: unavailable: {exc}", flush=True)

    # correctness first (doubles as the warm-up): same outputs and gradients as transformers
    hf_config._experts_implementation = "grouped_mm"
    ref_out, ref_grads = fwd_bwd(hf_block, x_BSD, grad_BSD)
    tol = 1e-4 if args.dtype == torch.float32 else 5e-2
    for name, block in list(ours.items()):
        try:
            out, grads = fwd_bwd(block, x_BSD, grad_BSD)
        except (RuntimeError, ImportError, OSError) as exc:  # e.g. a grouped_gemm built for another torch/CUDA
            print(f"{name}: FAILED: {exc}", flush=True)
            notes[name] = f"failed({_short(exc)})"
            del ours[name]
            continue
        err = max((out - ref_out).abs().max().item(), *((g - r).abs().max().item() for g, r in zip(grads, ref_grads)))
        scale = max(ref_out.abs().max().item(), 1e-6)
        print(f"{name}: max abs diff vs transformers (output and grads) {err:.2e} (output scale {scale:.2e})", flush=True)
        if err > tol * max(1.0, scale):
            print(f"{name}: WRONG, disagrees with transformers ({err:.3g} > {tol * max(1.0, scale):.3g})",
                  flush=True)
            notes[name] = "wrong"
            del ours[name]

    figures: dict[str, float] = {}
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout` in scripts/test_gpu.sh: still print what was measured
    try:
        t_hf = timed(hf_block, x_BSD, grad_BSD, args.iters, args.device, "hf_grouped_mm")
        for name, block in ours.items():
            figures[f"{name}_vs_hf"] = t_hf / timed(block, x_BSD, grad_BSD, args.iters, args.device, f"ours_{name}")
        if args.hf_eager:
            hf_config._experts_implementation = "eager"
            t_eager = timed(hf_block, x_BSD, grad_BSD, 1, args.device, "hf_eager")
            for name in list(ours):
                figures[f"{name}_vs_hf_eager"] = figures[f"{name}_vs_hf"] * t_eager / t_hf
    except KeyboardInterrupt:
        notes["interrupted"] = "1"
    pairs = [f"{k}={v:.2f}" for k, v in figures.items()] + [f"{k}={v}" for k, v in notes.items()]
    print(" ".join(pairs + [f"tokens={args.tokens}", f"device={args.device}"]))
    if any(v == "wrong" or v.startswith("failed(") for v in notes.values()):
        raise SystemExit("an experts backend failed or disagreed with transformers (see above)")


def _short(exc: BaseException, limit: int = 80) -> str:
    """The root cause of a failure (e.g. `No module named 'megablocks'`) as one `name=value` token: no spaces,
    no parentheses, at most `limit` characters. The full message is printed on its own line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return re.sub(r"[\s()]+", "_", f"{type(exc).__name__}:{exc}").strip("_")[:limit]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt

if __name__ == "__main__":
    main()
