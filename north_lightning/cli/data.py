"""`python -m north_lightning data report --config <stage.yaml>`: what an SFT stage will actually train on.
(`data import --format F SRC --out DIR`: public trajectory files into canonical records, see `data_import.py`.)

Builds the stage's datamodule exactly as `fit` would (same YAML, same filters, same seed), samples an
epoch-sized stream of packed rows and prints per-component, per-source and per-harness shares of trainable
tokens against the targets, filter and bad-record counts, and the packing efficiency. Last line:
`packing_efficiency=... mixture_max_error_pp=... rows=... trainable_tokens=...`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from north_lightning.cli.data_import import add_import_arguments, run_import_command

if TYPE_CHECKING:  # imported where used: `data import` should not pay for Lightning and torch
    from north_lightning.datamodules.sft import SFTDataModule


def load_data_args(configs: list[str]) -> dict[str, Any]:
    """`data.init_args` of a LightningCLI YAML (several files merge, later wins; interpolations resolved)."""
    from omegaconf import OmegaConf

    merged = OmegaConf.create()
    for path in configs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config not found: {path}")
        merged = OmegaConf.merge(merged, OmegaConf.load(path))
    data = OmegaConf.to_container(merged, resolve=True).get("data")
    if not isinstance(data, dict):
        raise ValueError(f"{configs}: no 'data' section")
    class_path = data.get("class_path", "")
    if class_path and not class_path.endswith("SFTDataModule"):
        raise ValueError(f"{configs}: data.class_path is {class_path!r}; `data report` needs the SFTDataModule")
    return dict(data.get("init_args", data))


def epoch_report(dm: SFTDataModule, rows: int | None = None) -> dict[str, Any]:
    """Sample packed rows until one epoch of trainable tokens (the pools' total) went by and the packer
    is in steady state, or exactly `rows` rows."""
    assert dm.pools is not None
    stream = dm.stream()
    epoch_tokens = sum(d.num_trainable for p in dm.pools.train for d in p)
    comps = dm.spec.components
    by_comp: Counter = Counter()
    by_source: Counter = Counter()
    by_harness: Counter = Counter()
    used = n_rows = 0
    # At least a few times the packer's open rows, so efficiency is measured in steady state.
    min_rows = 4 * stream.packer.max_open if rows is None else rows
    while (rows is None and (sum(by_comp.values()) < epoch_tokens or n_rows < min_rows)) or (rows is not None and n_rows < rows):
        for c, d in stream.row(n_rows):
            doc = dm.pools.train[c][d]
            used += doc.length
            by_comp[comps[c].name] += doc.num_trainable
            by_harness[comps[c].harness] += doc.num_trainable
            by_source[doc.source] += doc.num_trainable
        n_rows += 1
    total = sum(by_comp.values()) or 1
    targets = dict(zip([c.name for c in comps], dm.spec.shares))
    errors = {name: 100 * (by_comp[name] / total - share) for name, share in targets.items()}
    return {
        "mixture": dm.spec.name,
        "seq_len": dm.seq_len,
        "rows": n_rows,
        "trainable_tokens": total,
        "packing_efficiency": used / (n_rows * dm.seq_len) if n_rows else 0.0,
        "components": {name: {"target": targets[name], "achieved": by_comp[name] / total,
                              "documents": len(dm.pools.train[i])} for i, name in enumerate(targets)},
        "by_source": {k: v / total for k, v in sorted(by_source.items())},
        "by_harness": {k: v / total for k, v in sorted(by_harness.items())},
        "mixture_max_error_pp": max(abs(e) for e in errors.values()),
        "filters": dm.pools.filters.to_dict(),
        "bad_records": dict(dm.pools.bad_records.counts),
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"mixture {r['mixture']}  seq_len {r['seq_len']}  rows {r['rows']}  trainable tokens {r['trainable_tokens']}")
    print(f"{'component':<28}{'target':>9}{'achieved':>10}{'docs':>8}")
    for name, c in r["components"].items():
        print(f"{name:<28}{100 * c['target']:>8.2f}%{100 * c['achieved']:>9.2f}%{c['documents']:>8}")
    for title, key in (("source", "by_source"), ("harness", "by_harness")):
        print(f"{title:<28}{'share':>9}")
        for name, share in r[key].items():
            print(f"{name:<28}{100 * share:>8.2f}%")
    f = r["filters"]
    print(f"kept: {f['kept']}")
    print(f"dropped by filters: {f['dropped_total'] or 'none'}")
    for comp, counts in f["dropped_by_component"].items():
        print(f"  {comp}: {counts}")
    print(f"bad records: {r['bad_records'] or 'none'}")
    print(f"packing_efficiency={r['packing_efficiency']:.4f} mixture_max_error_pp={r['mixture_max_error_pp']:.3f} "
          f"rows={r['rows']} trainable_tokens={r['trainable_tokens']}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m north_lightning data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="per-source/per-harness trainable-token shares, filters, packing")
    rep.add_argument("--config", action="append", default=[], help="stage YAML (repeatable; later files win)")
    rep.add_argument("--mixture", help="a mixture spec YAML instead of a stage config")
    rep.add_argument("--seq-len", type=int, help="override the stage's seq_len")
    rep.add_argument("--tokenizer", help="override the stage's tokenizer directory")
    rep.add_argument("--rows", type=int, help="rows to sample (default: one epoch of trainable tokens)")
    rep.add_argument("--max-records", type=int, help="read at most this many records per component (quick look)")
    rep.add_argument("--json", help="also write the report as JSON here")
    imp = sub.add_parser("import", help="public trajectory files -> canonical records (Parquet) + report")
    add_import_arguments(imp)
    args = parser.parse_args(argv)
    if args.command == "import":
        return run_import_command(args)
    if not args.config and not args.mixture:
        parser.error("data report needs --config STAGE.yaml or --mixture MIXTURE.yaml")
    init_args = load_data_args(args.config) if args.config else {}
    if args.mixture:
        init_args["mixture"] = args.mixture
    if args.seq_len:
        init_args["seq_len"] = args.seq_len
    if args.tokenizer:
        init_args["tokenizer"] = args.tokenizer
    if args.max_records:
        init_args["max_records_per_component"] = args.max_records
    init_args["allow_missing_init"] = True  # a report reads data only; it needs no previous-stage weights
    from north_lightning.datamodules.sft import SFTDataModule

    dm = SFTDataModule(**init_args)
    dm.setup("fit")
    report = epoch_report(dm, args.rows)
    print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
