"""Model FLOPs utilisation of a North-width, reduced-depth model on one GPU (forward + backward, bf16).

North width: hidden 2048, 32 query / 4 KV heads of 128, 128 experts top-8 with FFN 768, the 262,144-token
vocabulary with the chunked head, window 4096 on sliding layers; depth reduced to --layers (default 6: the dense
prefix layer, four sliding MoE layers and one global MoE layer) so one GPU holds it. One packed row of --seq
tokens (documents around --doc-len) per step, parameters in bf16 (what FSDP2's bf16 param policy computes with).

FLOPs count *active* parameters only (the way MoE MFU is reported, e.g. NeMo AutoModel's ~28% for Qwen3-30B-A3B
on 8xH100): per token 2 x (attention projections + dense MLP or top-k experts + router + output head) plus
attention 4 x H x d x (keys the token actually attends: its document, causal, window), times 3 for fwd+bwd.
The optimizer step is not included. Baseline measured in the same run: the same model with the reference
("torch", one matmul pair per expert) experts backend.

    python bench/train_mfu.py --device cuda        # ~1-2 min on an H100
    python bench/train_mfu.py --device cpu         # tiny shapes: a dry run of the script, not a measurement

Last line: `mfu=... tflops=... tokens_per_s=... mfu_torch_experts=... speedup_vs_torch_experts=... ...`.
"""

from __future__ import annotations

import argparse
import signal

import torch

from kernel_timing import documents, interrupt, median_seconds
from north_lightning.model import NorthConfig, NorthForCausalLM

PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "B200": 2250.0, "A100": 312.0}


def peak_tflops(device: str, override: float | None) -> tuple[float, str]:
    if override:
        return override, "given"
    if device != "cuda":
        return 1.0, "nominal-cpu"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return value, name
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (dense bf16 peak of this card)")


def attended_keys(doc_S: torch.Tensor, window: int | None) -> float:
    """Mean number of keys per query allowed by document + causal (+ window) masking."""
    _, counts = torch.unique_consecutive(doc_S.cpu(), return_counts=True)
    total = 0
    for n in counts.tolist():
        w = n - 1 if window is None else min(n - 1, window)
        total += n * (w + 1) - w * (w + 1) // 2
    return total / doc_S.numel()


def flops_per_token(cfg: NorthConfig, doc_S: torch.Tensor) -> float:
    """Forward+backward model FLOPs per token, active parameters only."""
    D, H, G, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    matmul_params = cfg.vocab_size * D  # output head (the embedding lookup itself is free)
    attention = 0.0
    for layer in range(cfg.num_hidden_layers):
        matmul_params += D * d * (H + 2 * G) + H * d * D
        if cfg.is_dense(layer):
            matmul_params += 3 * D * cfg.dense_intermediate_size
        else:
            matmul_params += cfg.num_experts * D + 3 * D * cfg.expert_intermediate_size * cfg.num_experts_per_tok
        attention += 4 * H * d * attended_keys(doc_S, cfg.attention_window(layer))
    return 3 * (2 * matmul_params + attention)


def build(cfg: NorthConfig, device: str, dtype: torch.dtype) -> NorthForCausalLM:
    with torch.device("meta"):
        model = NorthForCausalLM(cfg)
    model = model.to_empty(device=device)
    model.reset_parameters()
    return model.to(dtype)


def measure(model: NorthForCausalLM, batch: dict[str, torch.Tensor], iters: int, device: str) -> float:
    """Median seconds of one forward+backward of the mean token NLL."""

    def step() -> None:
        logp, _ = model.token_logprobs(batch["input_ids"], batch["targets"], document_ids=batch["document_ids"])
        (-logp.sum() / (batch["targets"] != -100).sum()).backward()
        for p in model.parameters():
            p.grad = None

    return median_seconds(step, device, iters)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--layers", type=int, default=None, help="default 6 on cuda, 2 on cpu")
    p.add_argument("--seq", type=int, default=None, help="tokens per step (default 16384 on cuda, 512 on cpu)")
    p.add_argument("--doc-len", type=int, default=None, help="mean packed document length (default 4096 / 128)")
    p.add_argument("--attn", default=None, help="attention backend (default flash on cuda, sdpa on cpu)")
    p.add_argument("--experts", default="grouped", help="experts backend measured (grouped or megablocks)")
    p.add_argument("--baseline-experts", default="torch", help="experts backend of the baseline ('' to skip)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    cuda = args.device == "cuda"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if cuda:
        base = NorthConfig.preset("north_mini_code_30b", num_hidden_layers=args.layers or 6, router_aux_loss_coef=0.0)
    else:
        base = NorthConfig.preset("tiny", num_hidden_layers=args.layers or 2, router_aux_loss_coef=0.0)
    seq = args.seq or (16384 if cuda else 512)
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator().manual_seed(0)
    doc_S = documents(seq, args.doc_len or (4096 if cuda else 128), gen)
    ids = torch.randint(3, base.vocab_size, (1, seq), generator=gen)
    targets = torch.roll(ids, -1, dims=1)
    targets[0, torch.nonzero(doc_S[1:] != doc_S[:-1]).flatten()] = -100  # no prediction across documents
    targets[0, -1] = -100
    batch = {"input_ids": ids, "targets": targets, "document_ids": doc_S[None]}
    batch = {k: v.to(args.device) for k, v in batch.items()}
    peak, card = peak_tflops(args.device, args.peak_tflops)
    attn = args.attn or ("flash" if cuda else "sdpa")

    results: dict[str, float] = {}
    interrupted = ""
    signal.signal(signal.SIGTERM, interrupt)  # `timeout` in scripts/test_gpu.sh: still print what was measured
    try:
        for label, experts in (("", args.experts), ("_" + (args.baseline_experts or "none") + "_experts",
                                                     args.baseline_experts)):
            if not experts:
                continue
            cfg = base.replace(attn_backend=attn, experts_backend=experts)
            model = build(cfg, args.device, dtype)
            seconds = measure(model, batch, args.iters, args.device)
            tflops = flops_per_token(cfg, doc_S) * seq / seconds / 1e12
            results[f"mfu{label}"] = tflops / peak
            results[f"tflops{label}"] = tflops
            results[f"tokens_per_s{label}"] = seq / seconds
            print(f"experts={experts:<10} attn={attn}: {seconds * 1e3:8.1f} ms/step  {seq / seconds:9.0f} tok/s  "
                  f"{tflops:7.1f} TFLOP/s  MFU {tflops / peak:.1%} of {peak:g} ({card})", flush=True)
            del model
            if cuda:
                torch.cuda.empty_cache()
    except KeyboardInterrupt:
        interrupted = " interrupted=1"
    if len(results) > 3:
        base_label = "_" + args.baseline_experts + "_experts"
        results[f"speedup_vs{base_label}"] = results["tokens_per_s"] / results[f"tokens_per_s{base_label}"]
    pairs = [f"{k}={v:.4g}" for k, v in results.items()]
    pairs += [f"seq={seq}", f"layers={base.num_hidden_layers}", f"flops_per_token={flops_per_token(base, doc_S):.4g}",
              f"peak_tflops={peak:g}"] + ([interrupted.strip()] if interrupted else [])
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
