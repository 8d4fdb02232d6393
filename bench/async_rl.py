"""Trainer throughput under three rollout schedules, with heavy-tailed rollout durations.

Simulated time (a discrete-event loop), but the real `WindowedFIFO` forms every batch and enforces the
staleness bound, so the numbers measure our queue's rules, not an idealised model of them.

- sync: dispatch one batch of prompts with the current weights, wait for all of it, train, repeat.
- completion: workers sample continuously; the trainer takes the first groups to finish (window=1).
- windowed: workers sample continuously; windowed FIFO (window=0.1): at most 10% of a batch out of order.

Every schedule has the same sampler capacity (concurrent groups), the same group durations (lognormal,
p99 ~ 10x the median, drawn from one seeded stream; a re-dispatched group keeps its duration: a long task stays
long) and the same trainer step time. Weights are exported every `--export-every` optimizer steps (the recipe's
K=4) and staleness is bounded in optimizer steps (`--max-staleness-steps`, the recipe's 16), at dispatch
(backpressure: a worker slot stays idle rather than sample a group that could only expire) and at consumption.
`trained_duration_vs_sync` compares the mean duration of the groups the windowed schedule trained with the
synchronous baseline's (which trains every group it samples): below 1, the staleness bound or the window
removed long tasks.
Then, on the real tiny model and vLLM-CPU (`--engines`), the trainer's RL step time with sampling off and with an
engine generating continuously beside it, in this process (`inprocess`: its Python threads share the trainer's
GIL) and in a child process (`subprocess`, the sidecar's default), all in one run on the same machine.
Then `inflight_vs_drain`: rollouts per minute on the real stepped engine with heavy-tailed generation lengths and
an export every few seconds, in-flight (`keep`) over `drain`, both in the same run (`inflight_vs_drain()`).
Last line: `windowed_vs_sync=... windowed_vs_completion=... trained_duration_vs_sync=... max_staleness=...
train_step_off_s=... train_step_inprocess_s=... train_step_subprocess_s=... keep_rollouts_per_min=...
drain_rollouts_per_min=... inflight_vs_drain=...`.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections import Counter

from north_lightning.rl.queue import WindowedFIFO


class Durations:
    """Lognormal group durations with p99/median = `tail` (sigma = ln(tail) / z_0.99), one seeded stream."""

    def __init__(self, seed: int, median: float, tail: float) -> None:
        self.rng = random.Random(seed)
        self.mu, self.sigma = math.log(median), math.log(tail) / 2.3263

    def __call__(self) -> float:
        return self.rng.lognormvariate(self.mu, self.sigma)


def run_sync(args: argparse.Namespace) -> dict:
    dur = Durations(args.seed, args.median, args.tail)
    clock = [0.0]
    q = WindowedFIFO(window=0.0, max_staleness_steps=args.max_staleness_steps, clock=lambda: clock[0])
    busy = 0.0
    durations = []
    for step in range(args.steps):
        ends = []
        for i in range(args.batch):
            gid = q.dispatch(i, "sim", step)
            durations.append(dur())
            ends.append((clock[0] + durations[-1], gid))
        for t, gid in sorted(ends):
            clock[0] = t
            q.complete(gid, [], [step])
        batch = q.take(args.batch, step, timeout=0)
        assert batch is not None and len(batch) == args.batch
        clock[0] += args.train_time
        busy += args.train_time
        q.mark_trained([g.group_id for g in batch])
    return {"time": clock[0], "busy": busy, "staleness": Counter({0: args.steps * args.batch}), "counters": q.counters,
            "trained_mean_duration": sum(durations) / len(durations), "lengths": q.length_report()}


def run_async(args: argparse.Namespace, window: float) -> dict:
    dur = Durations(args.seed, args.median, args.tail)
    now = 0.0
    q = WindowedFIFO(window=window, max_staleness_steps=args.max_staleness_steps, clock=lambda: now)
    events: list[tuple[float, int, str, int, int]] = []  # (time, seq, kind, group_id, attempt)
    seq = 0
    step = 0
    idle_slots = 0  # sampler slots held back by backpressure
    trainer_free = True
    busy = 0.0
    staleness: Counter[int] = Counter()

    def policy_step() -> int:  # the optimizer step of the weights the sampler holds now
        return (step // args.export_every) * args.export_every

    def launch() -> bool:
        nonlocal seq
        if not q.admits(policy_step(), step, args.batch):
            return False
        redo = q.next_redispatch(policy_step())
        if redo is not None:
            gid, attempt = redo[0], redo[1]
        else:
            gid, attempt = q.dispatch(seq, "sim", policy_step()), 1
            duration_of[gid] = dur()  # a property of the prompt: a re-dispatched long task stays long
        heapq.heappush(events, (now + duration_of[gid], seq, "rollout", gid, attempt))
        seq += 1
        step_of[gid] = policy_step()
        return True

    step_of: dict[int, int] = {}  # policy step that sampled each group's current attempt
    duration_of: dict[int, float] = {}
    trained_durations: list[float] = []
    for _ in range(args.capacity):
        idle_slots += not launch()
    while step < args.steps:
        if trainer_free:
            batch = q.take(args.batch, step, timeout=0)
            if batch is not None:
                for g in batch:
                    staleness[g.staleness(step)] += 1
                    trained_durations.append(duration_of[g.group_id])
                trainer_free = False
                heapq.heappush(events, (now + args.train_time, seq, "train", -1, 0))
                seq += 1
                busy += args.train_time
                taken = [g.group_id for g in batch]
        now, _, kind, gid, attempt = heapq.heappop(events)
        if kind == "train":
            q.mark_trained(taken)
            step += 1
            trainer_free = True
            for _ in range(idle_slots):  # the trainer moved on: held-back slots may dispatch again
                idle_slots -= launch()
        else:
            q.complete(gid, [], [step_of[gid]], attempt=attempt)
            idle_slots += not launch()
    return {"time": now, "busy": busy, "staleness": staleness, "counters": q.counters,
            "trained_mean_duration": sum(trained_durations) / len(trained_durations), "lengths": q.length_report()}


def trainer_step_with_sampling(engines: list[str], repeats: int = 3) -> dict[str, float]:
    """Median RL step time of the tiny model with sampling off, then beside each engine kind generating
    continuously (see the module docstring)."""
    import os
    import statistics
    import tempfile
    import threading

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch

    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM
    from north_lightning.rl.engines.child import SubprocessVLLMEngine
    from north_lightning.rl.engines.inprocess import VLLMEngine
    from rl_step import rl_batch, timed_rl_step

    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig.preset("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = rl_batch(8, 256, 4096, seed=0)

    def step() -> float:
        return timed_rl_step(model, opt, batch)

    step()
    out = {"off": statistics.median(step() for _ in range(repeats))}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, tokenizer_dir=tiny_tokenizer_path())
        for kind in engines:
            cls = VLLMEngine if kind == "inprocess" else SubprocessVLLMEngine
            engine = cls(tmp, max_model_len=1024, kv_cache_bytes=128 * 2**20)
            stop, started = threading.Event(), threading.Event()

            def sample(engine=engine, stop=stop, started=started) -> None:
                i = 0
                while not stop.is_set():
                    engine.generate([[1, 10, 20, 30]] * 4, max_tokens=64, seed=i)
                    started.set()
                    i += 1

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            started.wait(timeout=600)
            out[kind] = statistics.median(step() for _ in range(repeats))
            stop.set()
            thread.join(timeout=120)
            engine.close()
    return out


def inflight_vs_drain(seconds: float, export_every_s: float, workers: int, median_tokens: float,
                      tail: float, rounds: int = 2) -> dict[str, float]:
    """Rollouts per minute of the tiny model on the real stepped vLLM-CPU engine (`rl/engines/stepped.py`) with
    heavy-tailed generation lengths (lognormal max_tokens, ignore_eos) and an export every `export_every_s`,
    under `keep` (in-flight update) and `drain`, measured on one engine in the same run, in ABBA order so drift
    of the shared machine's load hits both alike. Every worker draws the same length sequence in both modes."""
    import os
    import tempfile
    import threading
    import time

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch

    from north_lightning.assets import tiny_tokenizer_path
    from north_lightning.model import NorthConfig, NorthForCausalLM
    from north_lightning.model.hf import to_hf_state_dict
    from north_lightning.rl.engines.stepped import SteppedVLLMEngine

    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig.preset("tiny")).eval()
    weights = [to_hf_state_dict(model)]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    weights.append(to_hf_state_dict(model))
    max_model_len, prompt = 1024, [1, 10, 20, 30, 40, 50, 60, 70]
    totals = {"keep": [0, 0.0], "drain": [0, 0.0]}  # rollouts, seconds
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, tokenizer_dir=tiny_tokenizer_path())
        engine = SteppedVLLMEngine(tmp, max_model_len=max_model_len, kv_cache_bytes=256 * 2**20, ignore_eos=True)
        engine.generate([prompt], max_tokens=4)  # warm
        order = (["keep", "drain", "drain", "keep"] * rounds)[: 2 * rounds]
        for i, mode in enumerate(order):
            engine.mode = mode
            stop = threading.Event()
            done = [0]
            lock = threading.Lock()

            def work(w: int, rnd: int = i // 2) -> None:
                lengths = Durations(1000 * rnd + w, median_tokens, tail)
                j = 0
                while not stop.is_set():
                    n = max(1, min(int(lengths()), max_model_len - len(prompt) - 1))
                    engine.generate([prompt], max_tokens=n, seed=j)
                    j += 1
                    if not stop.is_set():
                        with lock:
                            done[0] += 1

            threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
            exports_before = engine.updates
            start = time.perf_counter()
            for t in threads:
                t.start()
            while time.perf_counter() - start < seconds:
                time.sleep(export_every_s)
                engine.load_weights(weights[(engine.policy_version + 1) % 2], engine.policy_version + 1)
            elapsed = time.perf_counter() - start
            stop.set()
            with lock:
                totals[mode][0] += done[0]
            totals[mode][1] += elapsed
            for t in threads:
                t.join(timeout=600)
            print(f"inflight round {i}: {mode:<5} rollouts={done[0]} in {elapsed:.1f} s "
                  f"({60 * done[0] / elapsed:.1f}/min), exports={engine.updates - exports_before} (a drain export "
                  "blocks the exporter as it blocks the trainer)")
        engine.close()
    per_min = {mode: 60 * n / t for mode, (n, t) in totals.items()}
    return {"keep_rollouts_per_min": per_min["keep"], "drain_rollouts_per_min": per_min["drain"],
            "inflight_vs_drain": per_min["keep"] / per_min["drain"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="groups per optimizer step")
    p.add_argument("--capacity", type=int, default=64, help="groups sampled concurrently (all schedules)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--median", type=float, default=1.0, help="median group duration (time units)")
    p.add_argument("--tail", type=float, default=10.0, help="p99 / median of group durations")
    p.add_argument("--train-time", type=float, default=1.5, help="trainer time per optimizer step")
    p.add_argument("--export-every", type=int, default=4, help="optimizer steps between exports (K)")
    p.add_argument("--max-staleness-steps", type=int, default=16, help="bound in optimizer steps")
    p.add_argument("--window", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", default="inprocess,subprocess",
                   help="engines to measure the trainer's step beside (comma-separated; 'none' skips the real part)")
    p.add_argument("--inflight-seconds", type=float, default=30.0,
                   help="seconds per mode and round of the keep-vs-drain measurement on the real engine (0 skips)")
    p.add_argument("--inflight-export-every-s", type=float, default=3.0)
    p.add_argument("--inflight-workers", type=int, default=16, help="concurrent rollouts (threads)")
    p.add_argument("--inflight-median-tokens", type=float, default=48.0)
    p.add_argument("--inflight-tail", type=float, default=10.0, help="p99 / median of generation lengths")
    args = p.parse_args()

    d = Durations(args.seed, args.median, args.tail)
    sample = sorted(d() for _ in range(100_000))
    print(f"durations: median={sample[50_000]:.2f} p99={sample[99_000]:.2f} (p99/median={sample[99_000] / sample[50_000]:.1f})")

    # A schedule that favours short rollouts trains on a skewed task mix: compare the mean duration of the
    # trained groups with the population mean (sync trains every group it samples, so it is the reference).
    results = {"sync": run_sync(args), "completion": run_async(args, 1.0), "windowed": run_async(args, args.window)}
    tput = {}
    for name, r in results.items():
        tput[name] = args.steps * args.batch / r["time"]
        hist = " ".join(f"{k}:{v}" for k, v in sorted(r["staleness"].items()))
        dropped = sum(v for k, v in r["counters"].items() if k.startswith("dropped_stale"))
        lengths = r["lengths"]
        removed = (f"removed n={lengths['removed_n']:.0f} mean={lengths.get('removed_mean', 0):.2f} "
                   f"p90={lengths.get('removed_p90', 0):.2f} vs kept mean={lengths.get('kept_mean', 0):.2f}")
        print(f"{name:<10} groups/time={tput[name]:6.2f} trainer_util={r['busy'] / r['time']:.2f} "
              f"staleness_hist={{{hist}}} dropped_stale={dropped} "
              f"backpressure_waits={r['counters'].get('backpressure_waits', 0)} "
              f"trained_mean_duration={r['trained_mean_duration']:.2f} ({removed})")
    max_stale = max(max(r["staleness"]) for r in results.values())
    assert max_stale <= args.max_staleness_steps, max_stale
    ratio = results["windowed"]["trained_mean_duration"] / results["sync"]["trained_mean_duration"]
    engines = [] if args.engines == "none" else [e for e in args.engines.split(",") if e]
    steps = trainer_step_with_sampling(engines) if engines else {}
    for kind, seconds in steps.items():
        print(f"trainer RL step (tiny, 8 x 256 tokens) with sampling {kind if kind != 'off' else 'off'}: {seconds:.3f} s")
    figures = [f"train_step_{kind}_s={seconds:.3f}" for kind, seconds in steps.items()]
    if args.inflight_seconds > 0:
        inflight = inflight_vs_drain(args.inflight_seconds, args.inflight_export_every_s, args.inflight_workers,
                                     args.inflight_median_tokens, args.inflight_tail)
        figures += [f"{k}={v:.2f}" for k, v in inflight.items()]
    real = " ".join(figures)
    print(f"windowed_vs_sync={tput['windowed'] / tput['sync']:.2f} "
          f"windowed_vs_completion={tput['windowed'] / tput['completion']:.2f} trained_duration_vs_sync={ratio:.3f} "
          f"max_staleness={max_stale} {real}".rstrip())


if __name__ == "__main__":
    main()
