"""`python -m north_lightning humaneval <generate|serve|add-annotator|report> ...`: blind pairwise evaluation.

generate --model NAME=MODEL --model NAME=MODEL --prompts FILE --out DIR
        every model answers every prompt through the OpenCode harness in a sandbox; writes DIR/responses.jsonl
        (blind ids only), DIR/mapping.json (blind id -> name, kept apart) and DIR/humaneval.db (items loaded).
        MODEL: an HF export directory (run by the in-process vLLM engine) or an OpenAI-compatible URL
        (http://host:port[/v1]; API key from the variable named by --api-key-env).
add-annotator --db FILE --name NAME [--admin]
        register an annotator (or an admin, who sees the report) and print their sign-in token
serve --db FILE [--host 127.0.0.1] [--port 8023]
        the rating web app
report --db FILE --out DIR [--mapping DIR/mapping.json]
        win rates, agreement, Bradley-Terry, ratings, biases, chart, raw votes (CSV, JSONL), flagged task ids
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_annotator(args: argparse.Namespace) -> int:
    from north_lightning.humaneval import db

    try:
        token = db.add_annotator(db.connect(args.db), args.name, admin=args.admin)
    except ValueError as err:
        print(f"error: {args.db}: {err}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _report(args: argparse.Namespace) -> int:
    from north_lightning.humaneval import db
    from north_lightning.humaneval.report import build_report, format_summary, load_mapping, write_report

    if not Path(args.db).is_file():
        print(f"error: {args.db}: no such database", file=sys.stderr)
        return 1
    try:
        conn = db.connect(args.db)
        report = build_report(conn, mapping=load_mapping(args.mapping), n_boot=args.bootstrap, seed=args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    paths = write_report(conn, args.out, report)
    print(format_summary(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from north_lightning.humaneval.serve import create_app

    if not Path(args.db).is_file():
        print(f"error: {args.db}: no such database (run `humaneval generate` first)", file=sys.stderr)
        return 1
    uvicorn.run(create_app(args.db), host=args.host, port=args.port, log_level="warning")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from north_lightning.humaneval.generate import GenerateConfig, parse_model_specs, run_generate

    try:
        cfg = GenerateConfig(models=parse_model_specs(args.model), prompts=args.prompts, out=args.out,
                             tokenizer=args.tokenizer, api_key_env=args.api_key_env, seed=args.seed,
                             max_context=args.max_context, max_tokens_per_turn=args.max_tokens_per_turn,
                             max_steps=args.max_steps, temperature=args.temperature, concurrency=args.concurrency)
        summary = run_generate(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # RuntimeError: the engine / server refused
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m north_lightning humaneval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("generate", help="run every model on every prompt; write responses + database")
    p.add_argument("--model", action="append", required=True, metavar="NAME=MODEL",
                   help="a checkpoint: NAME=HF_DIR or NAME=http://host:port (two or more)")
    p.add_argument("--prompts", required=True, help="prompts YAML (see north_lightning/humaneval/generate.py)")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", help="tokenizer dir for URL models (default: the tiny tokenizer)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the URL models' API key")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-context", type=int, default=4096)
    p.add_argument("--max-tokens-per-turn", type=int, default=512)
    p.add_argument("--max-steps", type=int, default=None, help="default: the task's budget (10 without a task)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--concurrency", type=int, default=2)
    p.set_defaults(fn=_generate)
    p = sub.add_parser("add-annotator", help="register an annotator and print their token")
    p.add_argument("--db", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--admin", action="store_true", help="an admin token: sees the report, votes on nothing")
    p.set_defaults(fn=_add_annotator)
    p = sub.add_parser("serve", help="the rating web app")
    p.add_argument("--db", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8023)
    p.set_defaults(fn=_serve)
    p = sub.add_parser("report", help="statistics, chart and exports from the votes")
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mapping", help="generate's mapping.json, to show checkpoint names instead of blind ids")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates for the intervals")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_report)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))
