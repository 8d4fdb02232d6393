"""Packing efficiency of `data prepare`'s rows on the bundled tiny mixtures (stage 1 at 2,048, stage 2 at 4,096
tokens per row), against the baseline of greedy packing in arrival order (a row is closed as soon as the next
document does not fit), measured in the same run on the same document stream. Also reports how far the
achieved trainable-token shares are from the mixture's targets.

    .venv/bin/python bench/packing.py [--rows 3000]

Last line: `packing_efficiency=<worst stage, best fit> baseline_efficiency=<greedy> mixture_max_error_pp=...
window_max_error_pp=<worst 1,000-row window> rows=...`
"""

from __future__ import annotations

import argparse
import logging
import tempfile

from north_lightning.cli.data import mixture_errors
from north_lightning.datamodules.mixture import MixtureSampler
from north_lightning.datamodules.prepare import PrepareConfig, prepare
from north_lightning.datamodules.prepare_documents import load_documents
from north_lightning.datamodules.shards import ShardIndex

STAGES = (("configs/tiny/mixtures/sft_stage1.yaml", 2048), ("configs/tiny/mixtures/sft_stage2.yaml", 4096))


def measure(mixture: str, seq_len: int, rows: int, out_dir: str) -> dict[str, float]:
    epochs, index = 1.0, None
    while index is None or index.rows() < rows:  # prepare enough passes for `rows` rows
        cfg = PrepareConfig(mixture, seq_len=seq_len, seed=0, epochs=epochs, out_dir=out_dir)
        index = ShardIndex.load(prepare(cfg))
        epochs *= max(2.0, 1.2 * rows / max(index.rows(), 1))
    stats = index.row_stats[:rows]
    best_fit = float(stats[:, -1].sum() / (rows * seq_len))
    # Baseline: the same sampled documents, in sampling order, greedily closed rows.
    spec = cfg.spec()
    table = load_documents(spec, index.path / "docs")[0]
    sampler = MixtureSampler([t.tolist() for t in table.trainable], spec.shares, cfg.seed)
    lengths: list[int] = []
    while sum(lengths) < stats[:, -1].sum():
        c, d = sampler.next()
        lengths.append(int(table.length[c][d]))
    greedy_rows, fill = 0, seq_len
    for n in lengths:
        if fill + n > seq_len:
            greedy_rows += 1
            fill = 0
        fill += n
    greedy = sum(lengths) / (greedy_rows * seq_len)
    error, window = mixture_errors(stats, spec.shares)
    print(f"{spec.name}: seq_len={seq_len} rows={rows} best_fit={best_fit:.4f} greedy={greedy:.4f} "
          f"mixture_max_error_pp={error:.3f} window_max_error_pp={window:.3f} "
          f"documents={sum(c['documents'] for c in index.meta['components'])}")
    return {"best_fit": best_fit, "greedy": greedy, "error": error, "window": window}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="packed rows per stage (steady state: >> 256)")
    args = parser.parse_args()
    logging.getLogger("north_lightning").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as out_dir:
        results = [measure(m, s, args.rows, out_dir) for m, s in STAGES]
    print(f"packing_efficiency={min(r['best_fit'] for r in results):.4f} "
          f"baseline_efficiency={min(r['greedy'] for r in results):.4f} "
          f"mixture_max_error_pp={max(r['error'] for r in results):.3f} "
          f"window_max_error_pp={max(r['window'] for r in results):.3f} rows={args.rows}")


if __name__ == "__main__":
    main()
