"""`python -m north_lightning eval --config eval.yaml [--set key=value ...]`: pass@k of a policy on tasks.

Every task is attempted `n_samples` times under each of `seeds` (default 3 seeds, temperature 1.0,
top_p 0.95). pass@k is the unbiased estimator over the n samples of one seed, averaged over tasks, then
reported as mean and std over seeds. pass@1 also gets a 95% Wilson score interval over all its episodes
(successes / episodes, every seed together), so a small eval says how small it is: the interval treats episodes
as independent, which samples of the same task are not, so with few tasks read it as a lower bound on the
uncertainty. Writes `<out>.json` (config, summary, every sample) and `<out>.csv`
(one row per task); the JSON is what `tasks filter` reads. With `transcripts: true` it also writes
`<out>.transcripts.jsonl`: every episode's decoded text (prompt, assistant turns, observations) with its reward and
end reason, to see *why* episodes fail without re-running them.

The policy is any class implementing `north_lightning.rl.rollout.Policy`, chosen by `class_path` with
`init_args` (e.g. `north_lightning.rl.engines.inprocess.VLLMEngine` with `model_dir`). Constructor parameters named
`tokenizer`, `harness` or `tasks` that the config leaves out are filled in (scripted policies need them).

    tasks: [north_lightning/envs/bundled]      # Harbor dirs, folders of them, SWE-style .jsonl
    harness: {terminal: terminus2, swe: swe_agent}   # or one name for all tasks
    policy: {class_path: north_lightning.rl.engines.inprocess.VLLMEngine, init_args: {model_dir: runs/sft/hf}}
    n_samples: 8
    k: [1, 8]
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from north_lightning.cli.tasks import pass_at_k


@dataclass
class EvalConfig:
    tasks: list[str]
    policy: dict[str, Any]
    harness: str | dict[str, str] = field(default_factory=lambda: {"terminal": "terminus2", "swe": "swe_agent"})
    tokenizer: str | None = None  # default: the policy's `tokenizer_dir` / `model_dir`, else the tiny tokenizer
    n_samples: int = 8
    k: list[int] = field(default_factory=lambda: [1, 8])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    temperature: float = 1.0
    top_p: float = 0.95
    max_context: int = 4096
    max_tokens_per_turn: int = 512
    command_timeout_sec: float = 60.0
    concurrency: int = 4  # episodes (containers) run at once; `num_workers` of the RL sidecar
    transcripts: bool = False  # also write <out>.transcripts.jsonl (decoded episodes)
    # sandboxes over several Docker engines (envs/fleet.py): URLs or {url, max_sandboxes}; empty: the local engine
    docker_hosts: list[Any] = field(default_factory=list)
    out: str = "runs/eval/report"


def load_config(path: str | None, overrides: list[str]) -> EvalConfig:
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the eval config: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the eval config must be a mapping")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        target = raw
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = yaml.safe_load(value)
    known = set(EvalConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path or '--set'}: unknown eval config key(s) {unknown}; known: {sorted(known)}")
    for key in ("tasks", "policy"):
        if key not in raw:
            raise ValueError(f"{path or '--set'}: missing required key {key!r}")
    if isinstance(raw["tasks"], str):
        raw["tasks"] = [raw["tasks"]]
    if not isinstance(raw["policy"], dict) or "class_path" not in raw["policy"]:
        raise ValueError(f"{path or '--set'}: key 'policy' needs a 'class_path' (and optional 'init_args')")
    if raw.get("docker_hosts"):
        from north_lightning.envs.fleet import parse_docker_hosts

        parse_docker_hosts(raw["docker_hosts"], where=f"{path or '--set'}: docker_hosts")
    return EvalConfig(**raw)


def build_policy(spec: dict[str, Any], *, tokenizer: Any, harness: Any, tasks: list[Any]) -> Any:
    module_name, _, cls_name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"policy.class_path {spec['class_path']!r} cannot be imported: {err}") from err
    kwargs = dict(spec.get("init_args") or {})
    params = inspect.signature(cls).parameters
    for name, value in (("tokenizer", tokenizer), ("harness", harness), ("tasks", tasks)):
        if name in params and name not in kwargs:
            kwargs[name] = value
    return cls(**kwargs)


def _tokenizer_path(cfg: EvalConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    args = cfg.policy.get("init_args") or {}
    for key in ("tokenizer_dir", "model_dir"):
        if args.get(key) and (Path(args[key]) / "tokenizer_config.json").is_file():
            return str(args[key])
    from north_lightning.assets import tiny_tokenizer_path

    return str(tiny_tokenizer_path())


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for the default z). Unlike the normal approximation it
    stays inside [0, 1] and is not zero-width at 0 / n or n / n, which small evals hit."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pass1_line(summary: dict[str, Any], n_tasks: int, n_samples: int, n_seeds: int) -> str:
    """`pass@1 = 0.438 (95% CI 0.32-0.56, Wilson; 64 episodes = 16 tasks x 4 samples x 1 seed)`."""
    p1 = summary["pass@1"]
    lo, hi = p1["ci95"]
    left_out = n_tasks * n_samples * n_seeds - p1["episodes"]
    return (f"pass@1 = {p1['mean']:.3f} (95% CI {lo:.2f}-{hi:.2f}, Wilson; {p1['episodes']} episodes = {n_tasks} tasks"
            f" x {n_samples} samples x {n_seeds} seed{'s' if n_seeds != 1 else ''}"
            + (f", less {left_out} infrastructure failures" if left_out else "") + ")")


def run_eval(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from north_lightning.envs.tasks import load_tasks
    from north_lightning.rl.rollout import EpisodeJob, RolloutConfig, run_episodes

    if cfg.docker_hosts:
        from north_lightning.envs.fleet import configure_docker_hosts

        configure_docker_hosts(cfg.docker_hosts)
    tasks = [t for path in cfg.tasks for t in load_tasks(path)]
    if not tasks:
        raise ValueError(f"no tasks found in {cfg.tasks}")
    harness_of = (lambda t: cfg.harness) if isinstance(cfg.harness, str) else (lambda t: cfg.harness[t.kind])
    missing = sorted({t.kind for t in tasks} - set(cfg.harness)) if isinstance(cfg.harness, dict) else []
    if missing:
        raise ValueError(f"harness: no harness given for task kind(s) {missing}")
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_path(cfg))
    policy = build_policy(cfg.policy, tokenizer=tokenizer, harness=cfg.harness, tasks=tasks)
    rollout = RolloutConfig(max_context=cfg.max_context, max_tokens_per_turn=cfg.max_tokens_per_turn,
                            temperature=cfg.temperature, top_p=cfg.top_p, command_timeout_sec=cfg.command_timeout_sec)
    jobs, keys = [], []
    for seed in cfg.seeds:
        for i, task in enumerate(tasks):
            for sample in range(cfg.n_samples):
                jobs.append(EpisodeJob(task, harness_of(task), seed=(seed * 100_003 + i) * 1_009 + sample))
                keys.append((seed, i, sample))
    line = None
    if progress:
        from north_lightning.callbacks.progress import ProgressLine

        line = ProgressLine(f"eval {Path(cfg.out).name}", len(jobs), unit="episode", stream=sys.stderr)
        counts = {"done": 0, "passed": 0}

        def on_done(episode: Any) -> None:
            counts["done"] += 1
            counts["passed"] += episode.reward >= 1.0
            line.update(counts["done"], {"pass": f"{counts['passed']}/{counts['done']}"})

    started = time.monotonic()
    if line is not None:
        line.start()
    episodes = run_episodes(policy, tokenizer, jobs, config=rollout, concurrency=cfg.concurrency,
                            on_done=on_done if line is not None else None)
    elapsed = time.monotonic() - started
    if line is not None:
        line.finish()
    if cfg.transcripts:
        _write_transcripts(Path(cfg.out).with_suffix(".transcripts.jsonl"), tokenizer, keys, episodes)
    per_task: list[dict[str, Any]] = [
        {"task_id": t.task_id, "kind": t.kind, "path": str(getattr(t, "path", "") or t.source), "samples": []}
        for t in tasks
    ]
    for (seed, i, sample), ep in zip(keys, episodes):
        per_task[i]["samples"].append({"seed": seed, "sample": sample, "reward": ep.reward, "steps": ep.steps,
                                       "end_reason": ep.end_reason, "tokens": ep.num_tokens,
                                       "infra_error": ep.infra_error,
                                       "infra_attempts": int(ep.timings.get("infra_attempts", 0))})
    summary: dict[str, Any] = {"episodes": len(episodes), "seconds": round(elapsed, 2)}
    for k in cfg.k:
        per_seed = []
        for seed in cfg.seeds:
            values = []
            for entry in per_task:  # infrastructure failures are no samples: out of n (and of c)
                rewards = [s["reward"] for s in entry["samples"] if s["seed"] == seed and not s["infra_error"]]
                if rewards:  # a task with no valid sample under this seed is left out of its mean
                    values.append(pass_at_k(len(rewards), sum(r >= 1.0 for r in rewards), min(k, len(rewards))))
            per_seed.append(sum(values) / len(values) if values else float("nan"))
        summary[f"pass@{k}"] = {"mean": statistics.fmean(per_seed),
                                "std": statistics.pstdev(per_seed) if len(per_seed) > 1 else 0.0,
                                "per_seed": per_seed}
    if 1 in cfg.k:
        valid = [ep for ep in episodes if not ep.infra_error]  # as in pass@k: infrastructure failures are no samples
        passed = sum(ep.reward >= 1.0 for ep in valid)
        summary["pass@1"].update(successes=passed, episodes=len(valid),
                                 ci95=list(wilson_interval(passed, len(valid))))
    reasons: dict[str, int] = {}
    for ep in episodes:
        reasons[ep.end_reason] = reasons.get(ep.end_reason, 0) + 1
    summary["end_reasons"] = reasons
    summary["infra_errors"] = sum(ep.infra_error for ep in episodes)
    summary["infra_error_rate"] = (
        sum(int(ep.timings.get("infra_attempts", 0)) for ep in episodes)
        / max(1, sum(int(ep.timings.get("infra_attempts", 0)) + (not ep.infra_error) for ep in episodes)))
    for entry in per_task:
        valid = [s for s in entry["samples"] if not s["infra_error"]]
        n, c = len(valid), sum(s["reward"] >= 1.0 for s in valid)
        for k in cfg.k:
            entry[f"pass@{k}"] = pass_at_k(n, c, min(k, n))
    return {"config": asdict(cfg), "summary": summary, "tasks": per_task}


def _write_transcripts(path: Path, tokenizer: Any, keys: list[tuple[int, int, int]], episodes: list[Any]) -> None:
    """One JSON line per episode: its segments decoded, marked `policy` (generated) or `context` (prompt,
    observations, template tokens), so a reader sees exactly what the model saw and wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for (seed, i, sample), ep in zip(keys, episodes):
            segments = [{"source": "policy" if seg.trainable else "context",
                         "text": tokenizer.decode(seg.token_ids, skip_special_tokens=False)} for seg in ep.segments]
            fh.write(json.dumps({"task_id": ep.task_id, "seed": seed, "task_index": i, "sample": sample,
                                 "reward": ep.reward, "end_reason": ep.end_reason, "steps": ep.steps,
                                 "segments": segments}) + "\n")


def write_report(report: dict[str, Any], out: str | Path, ks: list[int]) -> tuple[Path, Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out.with_suffix(".json"), out.with_suffix(".csv")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task_id", "kind", "samples", "successes", *[f"pass@{k}" for k in ks], "mean_steps"])
        for entry in report["tasks"]:
            samples = entry["samples"]
            writer.writerow([entry["task_id"], entry["kind"], len(samples), sum(s["reward"] >= 1.0 for s in samples),
                             *[f"{entry[f'pass@{k}']:.4f}" for k in ks],
                             f"{statistics.fmean(s['steps'] for s in samples):.2f}"])
    return json_path, csv_path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m north_lightning eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="eval YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dots for nesting, e.g. policy.init_args.model_dir=...)")
    args = parser.parse_args(argv)
    from north_lightning.envs.sandbox import install_cleanup_hooks

    install_cleanup_hooks()  # on the main thread, before worker threads start sandboxes
    try:
        cfg = load_config(args.config, args.set)
        report = run_eval(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    json_path, csv_path = write_report(report, cfg.out, cfg.k)
    s = report["summary"]
    print(f"wrote {json_path} and {csv_path}; end reasons: {s['end_reasons']}")
    if "ci95" in s.get("pass@1", {}):
        print(pass1_line(s, len(report["tasks"]), cfg.n_samples, len(cfg.seeds)))
    print(" ".join(f"pass@{k}={s[f'pass@{k}']['mean']:.4f}±{s[f'pass@{k}']['std']:.4f}" for k in cfg.k)
          + f" episodes={s['episodes']} seconds={s['seconds']}")
    return 0
