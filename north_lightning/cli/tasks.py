"""`python -m north_lightning tasks <verify|build-base|toy|list|filter|sweep> ...`

verify DIR [--oracle]   start each task's container, (apply the reference solution,) run its tests; prints one
                        line per task and `reward=<mean>` last; exits non-zero only on an error, never on reward 0
build-base [--force]    build the registry-free base image (cached by recipe hash) and print its tag
toy OUT --n N           write N seeded toy tasks (Harbor dirs) of a split into OUT
list PATH               the tasks found under PATH (Harbor dirs, SWE-style .jsonl)
filter REPORT --out F   keep tasks whose pass@k lies in a band, give each a step budget from its successful
                        trajectories (REPORT = the JSON written by `eval`); `--drop FILE` also drops the task ids
                        listed in FILE (one per line, `#` comments; e.g. `humaneval report`'s flagged_task_ids.txt)
sweep [--all]           remove this host's and user's sandbox containers whose owner process is gone (--all: live
                        owners' too); other users' and hosts' containers are never touched; with
                        NORTH_DOCKER_HOSTS=url,url every engine of that fleet is swept in turn
import --format F SRC --out POOL
                        SWE-bench-family rows (JSONL, Parquet, `datasets` save_to_disk dir) -> a pool JSONL;
                        rows missing a field the grader needs are listed with file:line and skipped
decontaminate POOL --against swe-bench,swe-bench-verified,swe-bench-pro --out CLEAN [--instances F --ngram 13]
                        drop instances of benchmark repositories (and problem statements sharing an n-gram with
                        a benchmark instance file); the report counts each reason and lists the dropped ids
split POOL --sft-fraction F --out-dir DIR [--seed S]
                        whole repositories to DIR/sft.jsonl or DIR/rl.jsonl (hash of seed + repository),
                        checked disjoint; DIR/split.json records seed, fraction, counts, sides
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from north_lightning.envs.tasks import BUNDLED_DIR, TaskError, load_tasks


def _verify(args: argparse.Namespace) -> int:
    from north_lightning.envs.sandbox import SandboxError, install_cleanup_hooks
    from north_lightning.envs.session import verify_task

    install_cleanup_hooks()  # on the main thread: SIGTERM/SIGINT then remove the pool's sandboxes too
    try:
        tasks = load_tasks(args.path)
        if not tasks:
            raise TaskError(f"{args.path}: no tasks found")
        rewards = []
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # results print in task order
            results = pool.map(lambda task: verify_task(task, oracle=args.oracle), tasks)
            for task, result in zip(tasks, results):
                rewards.append(result.reward)
                tests = " ".join(f"{name}={outcome}" for name, outcome in sorted(result.tests.items()))
                print(f"{task.task_id}: reward={result.reward:g} reason={result.reason} "
                      f"time={result.duration_s:.1f}s {tests}", flush=True)
                if args.verbose:
                    print(result.output)
    except (TaskError, SandboxError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"reward={sum(rewards) / len(rewards):g}")
    return 0


def _build_base(args: argparse.Namespace) -> int:
    from north_lightning.envs.images import build_base_image

    started = time.monotonic()
    try:
        tag = build_base_image(force=args.force, log=lambda msg: print(msg, file=sys.stderr))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{tag} ready in {time.monotonic() - started:.1f} s")
    return 0


def _toy(args: argparse.Namespace) -> int:
    from north_lightning.envs.toy_tasks import FAMILIES, materialize_toy_tasks

    families = tuple(f for f in args.families.split(",") if f) if args.families else FAMILIES
    paths = materialize_toy_tasks(args.out, args.n, seed=args.seed, split=args.split, families=families)
    print(f"wrote {len(paths)} {args.split} toy tasks ({', '.join(families)}) to {args.out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        for task in load_tasks(args.path):
            print(f"{task.task_id}\t{task.kind}\tmax_steps={task.max_steps}")
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def filter_tasks(report: dict[str, Any], *, low: float, high: float, k: int, step_slack: float = 1.5,
                 min_steps: int = 2, drop: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Keep tasks with `low <= pass@k <= high`; budget = ceil(slack * longest successful trajectory).
    Dropped tasks are counted by reason (`listed` in `drop`, `no_samples`, `infra_error`: every sample hit an
    infrastructure failure, `never_solved`, `too_hard`, `too_easy`); infrastructure failures never count as
    samples."""
    kept = []
    dropped = {"listed": 0, "no_samples": 0, "infra_error": 0, "never_solved": 0, "too_hard": 0, "too_easy": 0}
    for task in report["tasks"]:
        if task["task_id"] in drop:
            dropped["listed"] += 1
            continue
        all_samples = task.get("samples", [])
        samples = [s for s in all_samples if not s.get("infra_error")
                   and not str(s.get("end_reason", "")).startswith("infra_error:")]
        if not samples:
            dropped["infra_error" if all_samples else "no_samples"] += 1
            continue
        n, c = len(samples), sum(1 for s in samples if s["reward"] >= 1.0)
        value = pass_at_k(n, c, min(k, n))
        reason = "never_solved" if c == 0 else "too_hard" if value < low else "too_easy" if value > high else None
        if reason:
            dropped[reason] += 1
            continue
        lengths = [s["steps"] for s in samples if s["reward"] >= 1.0]
        kept.append({"task_id": task["task_id"], "path": task.get("path"), f"pass@{k}": value,
                     "max_steps": max(min_steps, math.ceil(step_slack * max(lengths)))})
    return {"band": [low, high], "k": k, "kept": kept, "dropped": dropped,
            "counts": {"input": len(report["tasks"]), "kept": len(kept)}}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c successes (Chen et al., 2021)."""
    if k <= 0 or n <= 0:
        return 0.0
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def _filter(args: argparse.Namespace) -> int:
    try:
        report = json.loads(Path(args.report).read_text())
        if not isinstance(report, dict) or not isinstance(report.get("tasks"), list):
            raise TaskError(f"{args.report}: expected the JSON report of `eval` (an object with a 'tasks' list)")
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: {args.report}: {err}", file=sys.stderr)
        return 1
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        drop = read_task_ids(args.drop) if args.drop else set()
    except OSError as err:
        print(f"error: --drop {args.drop}: {err}", file=sys.stderr)
        return 1
    result = filter_tasks(report, low=args.low, high=args.high, k=args.k, step_slack=args.step_slack, drop=drop)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"kept {result['counts']['kept']} of {result['counts']['input']} tasks; dropped {result['dropped']}; "
          f"wrote {args.out}")
    return 0


def read_task_ids(path: str | Path) -> set[str]:
    """Task ids, one per line; blank lines and `#` comments ignored."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return {line for line in lines if line}


def _sweep(args: argparse.Namespace) -> int:
    from north_lightning.envs.docker_host import sweep_orphans
    from north_lightning.envs.fleet import current_fleet

    fleet = current_fleet()  # NORTH_DOCKER_HOSTS: every host of the fleet, one by one
    if fleet is not None:
        removed = fleet.sweep_orphans(all_owners=args.all)
        fleet.close()
    else:
        removed = sweep_orphans(all_owners=args.all)  # a container's disk bound goes with it (envs/disk.py)
    print(f"removed {len(removed)} containers" + (f": {', '.join(removed)}" if removed else ""))
    return 0


def _import(args: argparse.Namespace) -> int:
    from north_lightning.envs.swe_pool import import_pool

    try:
        report = import_pool(args.format, args.src, args.out, strict=args.strict)
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for line in report.rejected + report.duplicates:
        print(f"skipped {line}", file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"imported={report.imported} rejected={len(report.rejected)} duplicates={len(report.duplicates)} "
          f"out={args.out}")
    return 0 if report.imported else 1


def _decontaminate(args: argparse.Namespace) -> int:
    from north_lightning.envs.decontamination import decontaminate

    try:
        report = decontaminate(args.pool, args.out, [n for n in args.against.split(",") if n],
                               instances=args.instances, ngram=args.ngram)
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    data = report.to_dict()
    Path(args.report or str(args.out) + ".report.json").write_text(json.dumps(data, indent=2) + "\n")
    for name in data["lists"]:
        print(f"list {name['name']}: {name['source']} ({name['date']})")
    print(f"input={report.input} kept={report.kept} dropped={sum(report.dropped_by_reason.values())} "
          + " ".join(f"{k}={v}" for k, v in sorted(report.dropped_by_reason.items())))
    return 0


def _split(args: argparse.Namespace) -> int:
    from north_lightning.envs.pool_split import split_pool

    try:
        summary = split_pool(args.pool, args.out_dir, sft_fraction=args.sft_fraction, seed=args.seed)
    except TaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"seed={summary['seed']} " + " ".join(f"{k}={v}" for k, v in summary["counts"].items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m north_lightning tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="run tasks' tests (after the oracle with --oracle)")
    p.add_argument("path", nargs="?", default=str(BUNDLED_DIR), help="task dir, folder of tasks, or .jsonl")
    p.add_argument("--oracle", action="store_true", help="apply solution/solve.sh (or the SWE patch) first")
    p.add_argument("--verbose", "-v", action="store_true", help="print the verifier output")
    p.add_argument("--jobs", "-j", type=int, default=1, help="tasks verified concurrently")
    p.set_defaults(fn=_verify)
    p = sub.add_parser("build-base", help="build the base image (cached)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=_build_base)
    p = sub.add_parser("toy", help="write seeded toy tasks")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=("train", "heldout"), default="train")
    p.add_argument("--families", default=None, help="comma-separated families (default: all of "
                   "write_file,arith,text_transform,python_fix)")
    p.set_defaults(fn=_toy)
    p = sub.add_parser("list", help="list tasks")
    p.add_argument("path", nargs="?", default=str(BUNDLED_DIR))
    p.set_defaults(fn=_list)
    p = sub.add_parser("filter", help="pass@k band filter + per-task step budgets from an eval report")
    p.add_argument("report")
    p.add_argument("--out", required=True)
    p.add_argument("--low", type=float, default=0.05, help="drop tasks with pass@k below (never solved)")
    p.add_argument("--high", type=float, default=0.95, help="drop tasks with pass@k above (trivially solved)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--step-slack", type=float, default=1.5, help="budget = ceil(slack * longest success)")
    p.add_argument("--drop", metavar="FILE", help="also drop the task ids listed in FILE (one per line)")
    p.set_defaults(fn=_filter)
    p = sub.add_parser("sweep", help="remove orphaned sandbox containers")
    p.add_argument("--all", action="store_true", help="also those of live owners (this host and user only)")
    p.set_defaults(fn=_sweep)
    p = sub.add_parser("import", help="import a SWE-bench-family dataset into a task pool")
    p.add_argument("src", help=".jsonl, .parquet, or a `datasets` save_to_disk directory")
    p.add_argument("--format", required=True, choices=("swe-bench", "swe-smith", "r2e-gym", "swe-rebench"))
    p.add_argument("--out", required=True, help="pool JSONL to write")
    p.add_argument("--strict", action="store_true", help="stop at the first row that cannot be imported")
    p.add_argument("--report", default=None, help="also write the counts and skipped rows as JSON here")
    p.set_defaults(fn=_import)
    p = sub.add_parser("decontaminate", help="drop pool instances of benchmark repositories / overlapping text")
    p.add_argument("pool")
    p.add_argument("--against", default="swe-bench,swe-bench-verified,swe-bench-pro",
                   help="comma-separated shipped lists (envs/benchmark_repos/) or JSON files")
    p.add_argument("--out", required=True)
    p.add_argument("--instances", default=None, help="benchmark instances (JSONL/Parquet/datasets dir) whose "
                   "problem statements are checked for n-gram overlap")
    p.add_argument("--ngram", type=int, default=13)
    p.add_argument("--report", default=None, help="report JSON (default: OUT.report.json)")
    p.set_defaults(fn=_decontaminate)
    p = sub.add_parser("split", help="repository-disjoint SFT-generation / RL subsets")
    p.add_argument("pool")
    p.add_argument("--sft-fraction", type=float, required=True, help="expected fraction of repositories for SFT")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_split)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))
