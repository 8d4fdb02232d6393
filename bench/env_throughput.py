"""Environment throughput: episodes/s and container start latency with 1, 4 and 8 concurrent sandboxes, and
episodes per minute with the sandboxes placed over a fleet of one and of two Docker hosts (`envs/fleet.py`).

A scripted agent (the oracle policy: real harness format, real tokenizer, real Docker containers and
verifiers) solves the bundled terminal tasks; only the model is absent, so the figures are the environment's
own cost per episode (image lookup, container start, tmux / exec steps, verification, removal). The baseline
is the same workload run one episode at a time, in the same process.

The fleet's hosts are `SocketProxy` stand-ins (unix sockets in front of this machine's one engine), so the same
cores serve one or two "hosts": the figures show what placement and the proxy hop cost, not a speed-up; the
`local` figure is the same workload on the engine directly (no fleet) at the same concurrency.

Last line: `speedup_8_vs_1=... start_p50_ms=... start_p99_ms=...` (start latencies at 8 concurrent, the
figure that matters for a rollout fleet) plus per-concurrency figures, then `episodes_per_min_local=...
episodes_per_min_hosts1=... episodes_per_min_hosts2=... fleet_overhead_pct_hosts2=...`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from transformers import AutoTokenizer

from north_lightning.assets import tiny_tokenizer_path
from north_lightning.envs.fleet import configure_docker_hosts
from north_lightning.envs.images import build_base_image
from north_lightning.envs.sandbox import wait_for_removals
from north_lightning.envs.socket_proxy import SocketProxy
from north_lightning.rl.scripted_policy import OraclePolicy
from north_lightning.envs.session import task_image
from north_lightning.envs.tasks import BUNDLED_DIR, load_tasks
from north_lightning.rl.rollout import EpisodeJob, RolloutConfig, run_episodes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=16, help="episodes per concurrency level")
    parser.add_argument("--harness", default="terminus2")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--hosts", type=int, nargs="*", default=[1, 2], help="fleet sizes to measure (0 = none)")
    parser.add_argument("--fleet-concurrency", type=int, default=4, help="episodes at once in the fleet runs")
    parser.add_argument("--fleet-repeats", type=int, default=3,
                        help="rounds of local / 1 host / 2 hosts, interleaved; the best round of each is reported "
                             "(a shared machine's load drifts between runs)")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()
    build_base_image()
    tasks = load_tasks(BUNDLED_DIR / "terminal")
    for task in tasks:
        task_image(task)
    print(f"images ready in {time.monotonic() - started:.1f} s ({len(tasks)} terminal tasks)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    policy = OraclePolicy(tokenizer, args.harness, tasks)
    config = RolloutConfig(max_tokens_per_turn=1024)
    jobs = [EpisodeJob(tasks[i % len(tasks)], args.harness, seed=i) for i in range(args.episodes)]

    def timed_run(concurrency: int, what: str) -> tuple[list, float] | None:
        t0 = time.monotonic()
        episodes = run_episodes(policy, tokenizer, jobs, config=config, concurrency=concurrency)
        wall = time.monotonic() - t0
        failed = [(ep.task_id, ep.end_reason) for ep in episodes if ep.reward != 1.0]
        if failed:
            print(f"error: scripted episodes failed ({what}): {failed}", file=sys.stderr)
            return None
        return episodes, wall

    results: dict[int, dict[str, float]] = {}
    for concurrency in args.concurrency:
        run = timed_run(concurrency, f"concurrency {concurrency}")
        if run is None:
            return 1
        episodes, wall = run
        starts = [ep.timings["start_s"] * 1000 for ep in episodes]
        results[concurrency] = {
            "eps": len(episodes) / wall, "p50": statistics.median(starts), "p99": percentile(starts, 99),
            "episode_s": statistics.fmean(ep.timings["total_s"] for ep in episodes),
        }
        r = results[concurrency]
        print(f"concurrency={concurrency}: {r['eps']:.2f} episodes/s, mean episode {r['episode_s']:.2f} s, "
              f"container start p50 {r['p50']:.0f} ms p99 {r['p99']:.0f} ms", flush=True)
    low, high = min(results), max(results)
    pairs = [f"speedup_{high}_vs_{low}={results[high]['eps'] / results[low]['eps']:.2f}",
             f"start_p50_ms={results[high]['p50']:.0f}", f"start_p99_ms={results[high]['p99']:.0f}"]
    pairs += [f"episodes_per_s_{c}={r['eps']:.2f}" for c, r in results.items()]
    pairs += [f"start_p50_ms_{c}={r['p50']:.0f}" for c, r in results.items()]
    if args.hosts:
        fleet_pairs = fleet_runs(args.hosts, args.fleet_concurrency, timed_run, args.fleet_repeats)
        if fleet_pairs is None:
            return 1
        pairs += fleet_pairs
    print(" ".join(pairs))
    return 0


def fleet_runs(sizes: list[int], concurrency: int, timed_run, repeats: int) -> list[str] | None:
    """Episodes per minute on the local engine and on fleets of `sizes` proxy hosts, at one concurrency: the best
    of `repeats` interleaved rounds each."""
    per_min: dict[str, float] = {}
    retries: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        for size in [0, *sizes] * repeats:
            proxies = [SocketProxy(unix_path=f"{tmp}/host{i}.sock").start() for i in range(size)]
            configure_docker_hosts([{"url": p.url, "max_sandboxes": concurrency} for p in proxies] or None)
            try:
                run = timed_run(concurrency, f"{size} hosts")
            finally:
                wait_for_removals()  # containers are removed in the background, through the proxies
                configure_docker_hosts(None)
                for proxy in proxies:
                    proxy.close()
            if run is None:
                return None
            episodes, wall = run
            name = "local" if size == 0 else f"hosts{size}"
            rate = len(episodes) / wall * 60
            per_min[name] = max(per_min.get(name, 0.0), rate)
            retries[name] = retries.get(name, 0) + sum(int(ep.timings.get("infra_attempts", 0)) for ep in episodes)
            print(f"{name} (concurrency {concurrency}): {rate:.1f} episodes/min, {retries[name]} infra retries so "
                  f"far, proxy errors {[e for p in proxies for e in p.errors][:3]}", flush=True)
    pairs = [f"episodes_per_min_{name}={value:.1f}" for name, value in per_min.items()]
    pairs += [f"fleet_overhead_pct_{name}={100 * (per_min['local'] / value - 1):.1f}"
              for name, value in per_min.items() if name != "local"]
    pairs += [f"infra_retries_{name}={value}" for name, value in retries.items()]
    return pairs


if __name__ == "__main__":
    sys.exit(main())
