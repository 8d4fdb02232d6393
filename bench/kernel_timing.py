"""What the GPU kernel benches (`attention.py`, `train_mfu.py`) share: the packed row they time, the timing loop
and their SIGTERM handling. Imported as `from kernel_timing import ...`: a bench runs as `python bench/X.py`, so
this folder is first on the path."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def documents(S: int, mean_len: int, gen: torch.Generator) -> torch.Tensor:
    """Document ids [S] of a packed row of documents with lengths in [mean/2, 3*mean/2]."""
    doc = torch.empty(S, dtype=torch.long)
    start, idx = 0, 0
    while start < S:
        length = int(torch.randint(mean_len // 2, 3 * mean_len // 2 + 1, (1,), generator=gen))
        doc[start:start + length] = idx
        start, idx = start + length, idx + 1
    return doc


def median_seconds(fn: Callable[[], object], device: str, iters: int) -> float:
    """Median wall time of `iters` calls of `fn` after one warm-up call (kernel JIT, compilation, autotuning),
    the device synchronised around each so queued CUDA work is counted."""
    fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interrupt(signum, frame) -> None:
    """SIGTERM handler (`timeout` in scripts/test_gpu.sh): the bench stops and still prints what it measured."""
    raise KeyboardInterrupt
