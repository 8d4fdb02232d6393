"""Split a task pool into an SFT-generation subset and an RL subset with no repository in both
(`tasks split POOL --sft-fraction F`).

Whole repositories go one way or the other, so a model fine-tuned on teacher trajectories of one subset never
meets those codebases again in RL (or in an evaluation drawn from the RL side). The side of a repository is a
hash of the seed and its normalised identity (`decontamination.normalize_repo`): deterministic, independent
of the pool's order and of the other repositories, and stable when the pool grows. `--sft-fraction` is thus the
expected fraction of *repositories*; the instance counts are reported. The written split is checked by reading
both files back.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from north_lightning.envs.decontamination import normalize_repo, pool_records
from north_lightning.envs.tasks import TaskError


def repo_side(repo: str, sft_fraction: float, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}\0{repo}".encode()).digest()
    return "sft" if int.from_bytes(digest[:8], "big") / 2**64 < sft_fraction else "rl"


def check_split(sft: str | Path, rl: str | Path) -> dict[str, int]:
    """Raise TaskError if a repository (normalised) or an instance id is on both sides; return the counts."""
    sides = {name: pool_records(p) for name, p in (("sft", sft), ("rl", rl))}
    repos = {name: {normalize_repo(r["repo"]) for _, r in recs} for name, recs in sides.items()}
    ids = {name: {r["instance_id"] for _, r in recs} for name, recs in sides.items()}
    shared = repos["sft"] & repos["rl"]
    if shared:
        raise TaskError(f"{sft} and {rl} share repositories: {sorted(shared)[:10]}")
    if ids["sft"] & ids["rl"]:
        raise TaskError(f"{sft} and {rl} share instances: {sorted(ids['sft'] & ids['rl'])[:10]}")
    return {f"{name}_{what}": len(values) for name in sides for what, values in
            (("instances", ids[name]), ("repos", repos[name]))}


def split_pool(pool: str | Path, out_dir: str | Path, *, sft_fraction: float, seed: int = 0) -> dict[str, Any]:
    """Write `out_dir/sft.jsonl`, `out_dir/rl.jsonl` (pool lines unchanged) and `out_dir/split.json` (seed,
    fraction, counts, each repository's side); returns that summary."""
    if not 0.0 <= sft_fraction <= 1.0:
        raise TaskError(f"--sft-fraction must lie in [0, 1], got {sft_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"sft": [], "rl": []}
    sides: dict[str, str] = {}
    for line, record in pool_records(pool):
        repo = normalize_repo(record["repo"])
        side = sides.setdefault(repo, repo_side(repo, sft_fraction, seed))
        lines[side].append(line)
    for side, side_lines in lines.items():
        (out_dir / f"{side}.jsonl").write_text("".join(line + "\n" for line in side_lines))
    counts = check_split(out_dir / "sft.jsonl", out_dir / "rl.jsonl")
    summary = {"pool": str(pool), "seed": seed, "sft_fraction": sft_fraction, "counts": counts,
               "repos": dict(sorted(sides.items()))}
    (out_dir / "split.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
