"""`python -m north_lightning synth --teacher URL_OR_DIR --tasks SFT_SUBSET --harness H --out DIR`.

Synthetic SFT data from verified teacher rollouts. The teacher is an OpenAI-compatible completions endpoint
(`http://host:port[/v1]` with `--model`, the served model name; its API key is read from the environment
variable named by `--api-key-env`, never from a flag, a config or a log) or an HF export directory run by the
in-process vLLM engine. The endpoint is spoken to as our sampler servers are (`OpenAIServerPolicy`:
`/v1/completions` with token-id prompts and `return_tokens_as_token_ids`, as `vllm serve` offers), so
`--tokenizer` must be the teacher's tokenizer (default: the engine's directory, else the tiny tokenizer).

The teacher works every task `--samples` times through the harness (`--harness swe_agent`, or one per task kind:
`--harness terminal=terminus2,swe=swe_agent`) in the usual sandboxes (`rl/synth.py`); only episodes the grader
rewards 1 that end by the agent's submission become records; near-duplicates (same task, same normalised
action sequence) are removed; then the SFT filters run on every harness a record renders in (all agent
harnesses for a harness-agnostic record, its own harness otherwise) exactly as `fit` applies them, and a record
any of them rejects is dropped. Output: Parquet shards `<source>-NNNNN.parquet` and `import_report-<source>.json`
(the importers' writer), plus `synth_report-<source>.json` with every count. Last line: `episodes=...
rewarded=... not_rewarded=... infra_error=... duplicates=... filtered=... kept=... shards=...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

from north_lightning.formats.harnesses import AGENT_HARNESSES, HARNESSES
from north_lightning.formats.records import Trajectory


def parse_harness(spec: str) -> str | dict[str, str]:
    """`NAME` for every task, or `kind=NAME,kind=NAME`; unknown harness names are an error naming them."""
    if "=" not in spec:
        names: dict[str, str] | str = spec
        chosen = [spec]
    else:
        names = {}
        for part in spec.split(","):
            kind, sep, name = part.partition("=")
            if not sep or not kind.strip() or not name.strip():
                raise ValueError(f"--harness {spec!r}: expected NAME or kind=NAME,kind=NAME")
            names[kind.strip()] = name.strip()
        chosen = list(names.values())
    bad = [n for n in chosen if n not in AGENT_HARNESSES]
    if bad:
        raise ValueError(f"--harness: unknown agent harness(es) {bad}; known: {', '.join(AGENT_HARNESSES)}")
    return names


def teacher_name(teacher: str, model: str) -> str:
    """What records say about the teacher: the URL without credentials or query, plus the model name; or the
    engine's directory."""
    if teacher.startswith(("http://", "https://")):
        url = urllib.parse.urlsplit(teacher)
        host = url.hostname or ""
        netloc = f"{host}:{url.port}" if url.port else host
        return f"{url.scheme}://{netloc}{url.path.rstrip('/')}#{model}"
    return f"vllm:{Path(teacher).resolve()}"


def build_teacher(args: argparse.Namespace) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    from north_lightning.assets import tiny_tokenizer_path

    if args.teacher.startswith(("http://", "https://")):
        from north_lightning.rl.engines.server import OpenAIServerPolicy

        key = os.environ.get(args.api_key_env) if args.api_key_env else None
        policy = OpenAIServerPolicy(args.teacher, model=args.model, api_key=key, timeout=args.request_timeout)
        return policy, AutoTokenizer.from_pretrained(args.tokenizer or tiny_tokenizer_path())
    if not (Path(args.teacher) / "config.json").is_file():
        raise ValueError(f"--teacher {args.teacher!r}: neither an http(s) URL nor an HF export directory "
                         "(no config.json)")
    from north_lightning.rl.engines.inprocess import VLLMEngine

    policy = VLLMEngine(args.teacher, max_model_len=args.max_context, seed=args.seed)
    return policy, AutoTokenizer.from_pretrained(args.tokenizer or args.teacher)


def filter_records(records: list[Trajectory], tokenizer: Any, seq_len: int, tasks: dict[str, Any]
                   ) -> tuple[list[Trajectory], Any]:
    """The SFT filters (`datamodules/filters.py`, render + checks + length as `data prepare` applies them) on every
    harness each record renders in; (records passing all, the FilterReport with per-harness counts)."""
    from north_lightning.datamodules.filters import COMMON_CONTROL_STRINGS, FilterConfig, FilterReport
    from north_lightning.datamodules.prepare_documents import record_reject_reason
    from north_lightning.datamodules.tokenize import control_strings
    from north_lightning.rl.rollout import make_harness

    config, report = FilterConfig(), FilterReport()
    controls = tuple(sorted(set(COMMON_CONTROL_STRINGS) | set(control_strings(tokenizer))))
    passed = []
    for record in records:
        names = AGENT_HARNESSES if record.harness is None else (record.harness,)
        ok = True
        for name in names:
            harness = make_harness(name, tasks[record.meta["task_id"]])
            reason = record_reject_reason(harness, record, tokenizer, seq_len, config.checks, controls)
            if reason is None:
                report.kept[name] += 1
            else:
                report.drop(name, reason, record.id)
                ok = False
        if ok:
            passed.append(record)
    return passed, report


def run_synth(args: argparse.Namespace) -> dict[str, Any]:
    from north_lightning.datamodules.importers.base import REPORT_NAME, ImportOptions, run_import
    from north_lightning.envs.tasks import load_tasks
    from north_lightning.rl.rollout import EpisodeJob, RolloutConfig
    from north_lightning.rl.synth import Unconvertible, dedup, episode_record, run_teacher_episodes

    harness = parse_harness(args.harness)
    tasks = [t for path in args.tasks for t in load_tasks(path)]
    if not tasks:
        raise ValueError(f"--tasks {args.tasks}: no tasks found")
    if isinstance(harness, dict):
        missing = sorted({t.kind for t in tasks} - set(harness))
        if missing:
            raise ValueError(f"--harness {args.harness!r}: no harness for task kind(s) {missing}")
    harness_of = {t.task_id: harness if isinstance(harness, str) else harness[t.kind] for t in tasks}
    policy, tokenizer = build_teacher(args)
    teacher = teacher_name(args.teacher, args.model)
    rollout = RolloutConfig(max_context=args.max_context, max_tokens_per_turn=args.max_tokens_per_turn,
                            temperature=args.temperature, top_p=args.top_p, max_steps=args.max_steps,
                            command_timeout_sec=args.command_timeout)
    jobs = [EpisodeJob(task, harness_of[task.task_id], seed=(args.seed * 100_003 + i) * 1_009 + s)
            for i, task in enumerate(tasks) for s in range(args.samples)]
    started = time.monotonic()
    try:
        results = run_teacher_episodes(policy, tokenizer, jobs, config=rollout, concurrency=args.concurrency)
    finally:
        close = getattr(policy, "close", None)
        if close is not None:
            close()
    counts: Counter = Counter()
    examples: dict[str, list[str]] = {}
    records: list[Trajectory] = []
    for n, (job, (episode, executions)) in enumerate(zip(jobs, results)):
        try:
            records.append(episode_record(episode, executions, task=job.task, harness_name=harness_of[job.task.task_id],
                                          teacher=teacher, source=args.source, sample=n, seed=job.seed))
        except Unconvertible as err:
            counts[err.reason] += 1
            examples.setdefault(err.reason, [])
            if len(examples[err.reason]) < 10:
                examples[err.reason].append(f"{job.task.task_id}#{n}: {err}")
    unique, duplicates = dedup(records)
    passed, filters = filter_records(unique, tokenizer, args.max_context, {t.task_id: t for t in tasks})
    imported = run_import("synth", ((r, r.id) for r in passed), lambda item, where, options: item, args.out,
                          options=ImportOptions(source=args.source), sources=[teacher])
    report = {
        "teacher": teacher, "harness": harness, "tasks": [str(p) for p in args.tasks], "samples": args.samples,
        "seconds": round(time.monotonic() - started, 2), "episodes": len(results),
        "end_reasons": dict(Counter(ep.end_reason for ep, _ in results)),
        "rewarded": len(records), "dropped": dict(counts), "examples": examples,
        "duplicates": len(duplicates), "duplicate_ids": [r.id for r in duplicates],
        "harness_agnostic": sum(r.harness is None for r in unique),
        "filters": filters.to_dict(), "filtered": len(unique) - len(passed),
        "kept": imported.kept, "shards": imported.shards, "import_report": REPORT_NAME.format(source=args.source),
    }
    Path(args.out, f"synth_report-{args.source}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m north_lightning synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="OpenAI-compatible URL (http://host:port[/v1]) or an HF export dir")
    p.add_argument("--model", default="policy", help="served model name at the URL")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the URL's API key (empty: send none)")
    p.add_argument("--tokenizer", help="the teacher's tokenizer dir (default: the engine dir, else the tiny tokenizer)")
    p.add_argument("--tasks", required=True, action="append",
                   help="task pool: Harbor dir(s), a folder of them, a SWE-style .jsonl (repeatable)")
    p.add_argument("--harness", required=True, help=f"NAME or kind=NAME,... (one of {', '.join(AGENT_HARNESSES)})")
    p.add_argument("--out", required=True, help="output directory (shards and reports)")
    p.add_argument("--source", default="synth", help="mixture source name of the records and file prefix")
    p.add_argument("--samples", type=int, default=1, help="episodes per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-context", type=int, default=8192, help="tokens per episode (also the filters' seq_len)")
    p.add_argument("--max-tokens-per-turn", type=int, default=1024)
    p.add_argument("--max-steps", type=int, help="turn budget (default: each task's own)")
    p.add_argument("--command-timeout", type=float, default=60.0)
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per teacher request")
    p.add_argument("--concurrency", type=int, default=4, help="episodes (sandboxes) at once")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.source != args.source.strip() or not args.source or "/" in args.source:
        print(f"error: --source {args.source!r} must be a plain name", file=sys.stderr)
        return 1
    if args.samples < 1:
        print("error: --samples must be at least 1", file=sys.stderr)
        return 1
    from north_lightning.envs.sandbox import install_cleanup_hooks
    from north_lightning.envs.tasks import TaskError

    install_cleanup_hooks()  # on the main thread, before worker threads start sandboxes
    try:
        report = run_synth(args)
    except (ValueError, FileNotFoundError, TaskError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:  # the teacher refused or is gone (HTTP error, unreachable, engine died)
        print(f"error: teacher {teacher_name(args.teacher, args.model)}: {err}", file=sys.stderr)
        return 1
    dropped = report["dropped"]
    print(f"synth: {report['episodes']} episodes of {report['teacher']} in {report['seconds']}s; end reasons "
          f"{report['end_reasons']}; report in {args.out}/synth_report-{args.source}.json")
    print(f"episodes={report['episodes']} rewarded={report['rewarded']} not_rewarded={dropped.get('not_rewarded', 0)} "
          f"infra_error={dropped.get('infra_error', 0)} duplicates={report['duplicates']} "
          f"filtered={report['filtered']} kept={report['kept']} shards={len(report['shards'])}")
    return 0
