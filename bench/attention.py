"""Sliding-window attention over packed documents: flash / flex vs SDPA with a dense mask, as the sequence grows.

North's sliding layers see a window of W=4096 previous tokens; a packed row holds several documents (lengths
drawn around --doc-len with a fixed seed). A dense S x S mask makes SDPA's cost grow 4x when S doubles,
whatever the window; the varlen/block-sparse kernels only touch the (document AND window) band, so their cost
should grow ~2x (target: 8K -> 16K growth <= 2.3x). `ideal_growth` is the ratio of allowed (query, key) pairs,
i.e. what a kernel doing exactly the necessary work would show. Every backend is checked against SDPA on the
same inputs before timing (a fast wrong kernel would be worthless).

    python bench/attention.py --device cuda          # 8K/16K/32K tokens, W=4096, H=32/G=4/d=128, bf16, fwd+bwd
    python bench/attention.py --device cpu           # small sizes, flex forward only (no CPU flex backward)

Last line: `<backend>_ms_<size>=...` for every backend and size, `<backend>_growth_<a>_<b>=...` for each doubling,
and `<backend>_speedup_vs_sdpa_<largest>=...`.
"""

from __future__ import annotations

import argparse
import signal

import torch

from kernel_timing import documents, interrupt, median_seconds
from north_lightning.model.attention import SDPAAttention, SequenceLayout


def allowed_pairs(doc_BS: torch.Tensor, window: int) -> int:
    """(query, key) pairs the mask allows: per document of length n, sum_i min(i, W) + 1."""
    _, counts = torch.unique_consecutive(doc_BS[0].cpu(), return_counts=True)
    total = 0
    for n in counts.tolist():
        w = min(n - 1, window)
        total += n * (w + 1) - w * (w + 1) // 2
    return total


class DenseMaskSDPA(SDPAAttention):
    """The baseline: SDPA with the dense boolean (document AND causal AND window) mask, K/V repeated to all query
    heads so CUDA can use its memory-efficient masked kernel (with GQA heads it would fall back to the math
    kernel, which materialises H x S x S scores and runs out of memory at 32K)."""

    def forward(self, q_BSHd, k_BSGd, v_BSGd, layout, window):
        rep = q_BSHd.shape[2] // k_BSGd.shape[2]
        return super().forward(q_BSHd, k_BSGd.repeat_interleave(rep, dim=2), v_BSGd.repeat_interleave(rep, dim=2),
                               layout, window)


def make_backend(name: str, scale: float):
    if name == "sdpa":
        return DenseMaskSDPA(scale)
    if name == "flex":
        from north_lightning.model.attention_flex import FlexAttention
        return FlexAttention(scale)
    from north_lightning.model.attention_flash import FlashAttention
    return FlashAttention(scale)


def run_once(backend, q, k, v, layout: SequenceLayout, window: int, backward: bool) -> torch.Tensor:
    with torch.set_grad_enabled(backward):
        out = backend(q, k, v, layout, window)
        if backward:
            out.backward(torch.ones_like(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", default=None, help="comma-separated token counts (default: cuda 8192,16384,32768)")
    p.add_argument("--window", type=int, default=None, help="default: 4096 on cuda, 64 on cpu")
    p.add_argument("--backends", default=None, help="default: flash,flex,sdpa on cuda; flex,sdpa on cpu")
    p.add_argument("--doc-len", type=int, default=None, help="mean packed document length (default 8192 / 256)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    cuda = args.device == "cuda"
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in (args.sizes or ("8192,16384,32768" if cuda else "512,1024")).split(",")]
    window = args.window or (4096 if cuda else 64)
    backends = (args.backends or ("flash,flex,sdpa" if cuda else "flex,sdpa")).split(",")
    H, G, d = (32, 4, 128) if cuda else (4, 2, 32)
    dtype = torch.bfloat16 if cuda else torch.float32
    backward = cuda  # FlexAttention has no CPU backward in torch 2.13
    gen = torch.Generator().manual_seed(0)
    results: dict[str, float] = {}
    notes: dict[str, str] = {"window": str(window)}
    signal.signal(signal.SIGTERM, interrupt)  # `timeout` in scripts/test_gpu.sh: still print what was measured
    failed = False
    try:
        for S in sizes:
            failed |= measure_size(S, backends, args, results, notes, window, (H, G, d), dtype, backward, gen)
    except KeyboardInterrupt:
        notes["interrupted"] = "1"
    print(summary(results, sizes, backends, notes))
    if failed:
        raise SystemExit("a backend disagreed with SDPA (see above)")


def measure_size(S: int, backends: list[str], args, results: dict[str, float], notes: dict[str, str], window: int,
                 shape: tuple[int, int, int], dtype: torch.dtype, backward: bool, gen: torch.Generator) -> bool:
    """Time every backend at S tokens; returns True if one of them computed a wrong result."""
    H, G, d = shape
    scale, failed = d**-0.5, False
    mean_len = args.doc_len or (8192 if args.device == "cuda" else 256)
    doc_BS = documents(S, mean_len=mean_len, gen=gen)[None].to(args.device)
    results[f"pairs_{S}"] = allowed_pairs(doc_BS, window)
    q, k, v = (torch.randn(1, S, n, d, generator=gen).to(args.device, dtype).requires_grad_(backward)
               for n in (H, G, G))
    try:
        reference = run_once(DenseMaskSDPA(scale), q, k, v, SequenceLayout(1, S, doc_BS), window, backward=False)
    except torch.OutOfMemoryError:
        reference = None  # then the kernels are checked against each other below
        torch.cuda.empty_cache()
    for name in backends:
        try:
            backend = make_backend(name, scale)
        except ImportError as exc:  # reported, never replaced by another backend
            print(f"{name:>5}: unavailable ({exc})", flush=True)
            notes[f"{name}_available"] = "0"
            continue
        if getattr(backend, "impl", None):
            notes["flash_impl"] = backend.impl
        # one layout per size, as in the model: the dense mask / cu_seqlens / BlockMask are built once per
        # forward and shared by every layer, so the timed cost is one layer's attention
        layout = SequenceLayout(1, S, doc_BS)
        try:
            out = run_once(backend, q, k, v, layout, window, backward=False)
            reference = out if reference is None else reference
            err = float((out.float() - reference.float()).abs().max())
            tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
            if err > tol:
                print(f"{name:>5} S={S:>6}: WRONG, max |out - sdpa| = {err:.3g} > {tol}", flush=True)
                notes[f"{name}_wrong"] = "1"
                failed = True
                continue
            step = lambda: run_once(backend, q, k, v, layout, window, backward)  # noqa: E731
            ms = median_seconds(step, args.device, args.iters) * 1e3
        except torch.OutOfMemoryError:
            print(f"{name:>5} S={S:>6}: out of memory", flush=True)
            notes[f"{name}_oom_{S}"] = "1"
            del layout
            torch.cuda.empty_cache()
            continue
        results[f"{name}_ms_{S}"] = ms
        print(f"{name:>5} S={S:>6} W={window} {'fwd+bwd' if backward else 'fwd'}: {ms:9.2f} ms", flush=True)
        q.grad = k.grad = v.grad = None
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return failed


def summary(results: dict[str, float], sizes: list[int], backends: list[str], notes: dict[str, str]) -> str:
    """The last line: every measured time, growths and speed-ups where both ends were measured, and notes."""
    pairs = [f"{key}={value:.3f}" for key, value in results.items() if not key.startswith("pairs_")]
    for a, b in zip(sizes, sizes[1:]):  # what a kernel doing only the allowed work would show
        if f"pairs_{b}" in results and f"pairs_{a}" in results:
            pairs.append(f"ideal_growth_{a}_{b}={results[f'pairs_{b}'] / results[f'pairs_{a}']:.2f}")
    for name in backends:
        for a, b in zip(sizes, sizes[1:]):
            if f"{name}_ms_{a}" in results and f"{name}_ms_{b}" in results:
                pairs.append(f"{name}_growth_{a}_{b}={results[f'{name}_ms_{b}'] / results[f'{name}_ms_{a}']:.2f}")
        last = max((S for S in sizes if f"{name}_ms_{S}" in results and f"sdpa_ms_{S}" in results), default=None)
        if name != "sdpa" and last is not None:
            speedup = results[f"sdpa_ms_{last}"] / results[f"{name}_ms_{last}"]
            pairs.append(f"{name}_speedup_vs_sdpa_{last}={speedup:.2f}")
    pairs += [f"{key}={value}" for key, value in notes.items()]
    return " ".join(pairs)


if __name__ == "__main__":
    main()
