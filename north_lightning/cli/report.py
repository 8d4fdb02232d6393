"""`python -m north_lightning report RUN_DIR [--out DIR]`: PNG plots of a run's logged metrics.

Reads the CSVLogger's `metrics.csv` files under RUN_DIR (all versions, so a resumed run is one curve) and
draws one figure per topic: loss, reward and pass@1 per environment, staleness, queue depth, trainer idle
fraction, train/sampler logprob mismatch, CISPO clipping/ratio/entropy. A topic with no logged metric is
skipped and named in the output, so a missing metric is visible rather than silently absent.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

TOPICS: dict[str, tuple[str, ...]] = {
    "loss": ("train/loss",),
    "reward": ("rl/reward_mean", "rl/pass@1/"),
    "staleness": ("rl/staleness_mean", "rl/staleness/"),
    "queue": ("rl/queue_completed", "rl/queue_running", "rl/queue_backlog", "rl/dropped_stale_total",
              "rl/failed_total", "rl/requeued_total"),
    "trainer_idle": ("rl/trainer_idle_frac",),
    "logprob_mismatch": ("rl/logprob_mismatch_mean", "rl/logprob_mismatch_max", "rl/logprob_diff_mean"),
    "cispo": ("rl/clip_frac_low", "rl/clip_frac_high", "rl/ratio_mean", "rl/entropy"),
    "episodes": ("rl/traj_tokens_mean", "rl/traj_steps_mean", "rl/invalid_tool_call_rate"),
    "sampler": ("rl/sampler_tokens_per_s", "rl/export_seconds", "rl/policy_version"),
}


def read_metrics(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """metric -> [(step, value)] over every metrics.csv under run_dir, sorted by step."""
    files = sorted(run_dir.rglob("metrics.csv"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no metrics.csv found (the report reads CSVLogger output; "
                                "set trainer.logger to lightning.pytorch.loggers.CSVLogger)")
    series: dict[str, list[tuple[float, float]]] = {}
    for path in files:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                step = row.get("step")
                if step in (None, ""):
                    continue
                for key, value in row.items():
                    if key in ("step", "epoch") or value in (None, ""):
                        continue
                    try:
                        series.setdefault(key, []).append((float(step), float(value)))
                    except ValueError:
                        continue
    for points in series.values():
        points.sort()
    return series


def plot(series: dict[str, list[tuple[float, float]]], out_dir: Path) -> tuple[list[Path], list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written, missing = [], []
    for topic, prefixes in TOPICS.items():
        keys = sorted(k for k in series if any(k == p or (p.endswith("/") and k.startswith(p)) for p in prefixes))
        if not keys:
            missing.append(topic)
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            xs, ys = zip(*[(s, v) for s, v in series[key] if math.isfinite(v)]) if series[key] else ((), ())
            ax.plot(xs, ys, label=key, marker="." if len(xs) < 50 else None)
        ax.set_xlabel("step")
        ax.set_title(topic)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{topic}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written, missing


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m north_lightning report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run's trainer.default_root_dir")
    parser.add_argument("--out", type=Path, default=None, help="where to write PNGs (default RUN_DIR/report)")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        parser.error(f"{args.run_dir}: not a directory")
    series = read_metrics(args.run_dir)
    written, missing = plot(series, args.out or args.run_dir / "report")
    for path in written:
        print(f"wrote {path}")
    if missing:
        print(f"no metrics logged for: {', '.join(missing)}")
    return 0 if written else 1
