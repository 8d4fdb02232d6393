"""`python -m north_lightning data import --format F SRC --out DIR [--include-unresolved]`.

Reads public agent trajectories (SWE-agent, mini-SWE-agent, OpenHands, Harbor / Terminus-2, OpenAI chat
messages) from files, a saved HF dataset directory, or `--hf NAME`, and writes canonical records as Parquet
shards `<source>-NNNNN.parquet` plus `import_report-<source>.json` (kept; dropped as unresolved / truncated /
unsupported_tool / malformed, with file:line examples). Last line: `kept=... dropped=... unresolved=...
truncated=... unsupported_tool=... malformed=... shards=...`.
"""

from __future__ import annotations

import argparse

from north_lightning.datamodules.importers import DROP_REASONS, FORMATS, REPORT_NAME, import_trajectories


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="the trajectory format of SRC")
    parser.add_argument("src", help="a file, a directory of files, a save_to_disk directory, or with --hf a dataset name")
    parser.add_argument("--out", required=True, help="output directory for the Parquet shards and the report")
    parser.add_argument("--hf", action="store_true", help="SRC is a dataset for datasets.load_dataset")
    parser.add_argument("--split", help="dataset split (when the dataset has several)")
    parser.add_argument("--include-unresolved", action="store_true",
                        help="keep trajectories the format marks as failed (as verified: false)")
    parser.add_argument("--source", help="mixture source name of the records and prefix of the shard and report "
                                          "files (default: the format name, e.g. swe_agent)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="records per Parquet shard")


def run_import_command(args: argparse.Namespace) -> int:
    report = import_trajectories(args.format, args.src, args.out, hf=args.hf, split=args.split,
                                 include_unresolved=args.include_unresolved, source=args.source,
                                 shard_size=args.shard_size)
    name = REPORT_NAME.format(source=args.source or args.format.replace("-", "_"))
    print(f"{args.format}: {report.total} items from {args.src}; report in {args.out}/{name}")
    for reason in DROP_REASONS:
        for example in report.examples[reason][:3]:
            print(f"  dropped ({reason}) {example}")
    counts = " ".join(f"{r}={report.dropped[r]}" for r in DROP_REASONS)
    print(f"kept={report.kept} dropped={sum(report.dropped.values())} {counts} shards={len(report.shards)}")
    return 0
