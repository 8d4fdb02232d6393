"""Packing efficiency of the SFT datamodule on the bundled tiny mixtures (stage 1 at 2,048, stage 2 at 4,096
tokens per row), against the baseline of greedy packing in arrival order (a row is closed as soon as the next
document does not fit), measured in the same run on the same document stream. Also reports how far the
achieved trainable-token shares are from the mixture's targets.

    .venv/bin/python bench/packing.py [--rows 3000]

Last line: `packing_efficiency=<worst stage, best fit> baseline_efficiency=<greedy> mixture_max_error_pp=... rows=...`
"""

from __future__ import annotations

import argparse
import logging

from north_lightning.datamodules.sft import SFTDataModule

STAGES = (("configs/tiny/mixtures/sft_stage1.yaml", 2048), ("configs/tiny/mixtures/sft_stage2.yaml", 4096))


def measure(mixture: str, seq_len: int, rows: int) -> dict[str, float]:
    dm = SFTDataModule(mixture, seq_len=seq_len, seed=0)
    dm.setup("fit")
    stream = dm.stream()
    used = 0
    for i in range(rows):
        for c, d in stream.row(i):
            used += dm.pools.train[c][d].length
    best_fit = used / (rows * seq_len)
    # Baseline: the same sampled documents, in sampling order, greedily closed rows.
    sampler_docs = []
    replay = dm.stream()
    while sum(sampler_docs) < used:
        c, d = replay.sampler.next()
        sampler_docs.append(dm.pools.train[c][d].length)
    greedy_rows, fill = 0, seq_len
    for n in sampler_docs:
        if fill + n > seq_len:
            greedy_rows += 1
            fill = 0
        fill += n
    greedy = sum(sampler_docs) / (greedy_rows * seq_len)
    tokens = [0] * len(dm.spec.components)
    for i in range(rows):
        for c, d in stream.row(i):
            tokens[c] += dm.pools.train[c][d].num_trainable
    total = sum(tokens)
    error = max(abs(t / total - s) for t, s in zip(tokens, dm.spec.shares)) * 100
    print(f"{dm.spec.name}: seq_len={seq_len} rows={rows} best_fit={best_fit:.4f} greedy={greedy:.4f} "
          f"mixture_max_error_pp={error:.3f} documents={sum(len(p) for p in dm.pools.train)}")
    return {"best_fit": best_fit, "greedy": greedy, "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="packed rows per stage (steady state: >> 256)")
    args = parser.parse_args()
    logging.getLogger("north_lightning").setLevel(logging.ERROR)
    results = [measure(m, s, args.rows) for m, s in STAGES]
    print(f"packing_efficiency={min(r['best_fit'] for r in results):.4f} "
          f"baseline_efficiency={min(r['greedy'] for r in results):.4f} "
          f"mixture_max_error_pp={max(r['error'] for r in results):.3f} rows={args.rows}")


if __name__ == "__main__":
    main()
