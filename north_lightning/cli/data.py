"""`python -m north_lightning data prepare | report | inspect`: make, check and look into an SFT stage's shards.

- `prepare --config STAGE.yaml [--num-proc N]`: render, filter, tokenise, mask and pack the stage's mixture
  into content-hashed shards (`datamodules/prepare.py`); reuses them when nothing changed, resumes when killed.
  Last line: `rows=... trainable_tokens=... seconds=... shard_dir=...`.
- `report --config STAGE.yaml`: what the stage will train on, from the shards' index: per-component and
  per-harness shares of trainable tokens against the targets (over all rows and the worst window of 1,000
  rows), filter and bad-record counts, packing efficiency. Last line: `packing_efficiency=...
  mixture_max_error_pp=... window_max_error_pp=... rows=... trainable_tokens=...`.
- `inspect SHARD_DIR --row N`: one packed row decoded, trained tokens marked, document boundaries shown.
- `import --format F SRC --out DIR`: public trajectory files into canonical records (see `data_import.py`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from north_lightning.cli.data_import import add_import_arguments, run_import_command

if TYPE_CHECKING:  # imported where used: `data import` should not pay for Lightning and torch
    from north_lightning.datamodules.sft import SFTDataModule

WINDOW_ROWS = 1000


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


def mixture_errors(stats: np.ndarray, shares: list[float], window: int = WINDOW_ROWS) -> tuple[float, float]:
    """Largest |achieved - target| share of trainable tokens in percentage points: over all rows, and over
    every window of `window` consecutive rows (all rows when there are fewer)."""
    per_comp = stats[:, :-1].astype(np.float64)
    target = np.asarray(shares)
    total = per_comp.sum(axis=0)
    overall = float(np.abs(total / max(total.sum(), 1) - target).max() * 100)
    w = min(window, len(per_comp))
    csum = np.vstack([np.zeros((1, per_comp.shape[1])), np.cumsum(per_comp, axis=0)])
    win = csum[w:] - csum[:-w]
    frac = win / np.maximum(win.sum(axis=1, keepdims=True), 1)
    return overall, float(np.abs(frac - target).max() * 100)


def epoch_report(dm: SFTDataModule, rows: int | None = None) -> dict[str, Any]:
    """Shares, packing and filter counts of the stage's train rows (the first `rows` of them if given)."""
    assert dm.index is not None
    meta, stats = dm.index.meta, dm.index.row_stats
    if rows is not None:
        stats = stats[:rows]
    comps = meta["components"]
    per_comp = stats[:, :-1].sum(axis=0)
    total = int(per_comp.sum()) or 1
    shares = [c["share"] for c in comps]
    overall, window = mixture_errors(stats, shares)
    by_harness: Counter = Counter()
    for c, t in zip(comps, per_comp):
        by_harness[c["harness"]] += int(t)
    return {
        "mixture": meta["config"]["mixture"], "seq_len": dm.seq_len, "rows": int(len(stats)), "trainable_tokens": total,
        "shard_dir": str(dm.index.path),
        "packing_efficiency": float(stats[:, -1].sum() / max(len(stats) * dm.seq_len, 1)),
        "components": {c["name"]: {"target": c["share"], "achieved": int(t) / total, "documents": c["documents"]}
                       for c, t in zip(comps, per_comp)},
        "by_harness": {k: v / total for k, v in sorted(by_harness.items())},
        "mixture_max_error_pp": overall, "window_max_error_pp": window,
        "filters": meta["filters"], "bad_records": meta["bad_records"],
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"mixture {r['mixture']}  seq_len {r['seq_len']}  rows {r['rows']}  trainable tokens {r['trainable_tokens']}")
    print(f"{'component':<28}{'target':>9}{'achieved':>10}{'docs':>8}")
    for name, c in r["components"].items():
        print(f"{name:<28}{100 * c['target']:>8.2f}%{100 * c['achieved']:>9.2f}%{c['documents']:>8}")
    print(f"{'harness':<28}{'share':>9}")
    for name, share in r["by_harness"].items():
        print(f"{name:<28}{100 * share:>8.2f}%")
    f = r["filters"]
    print(f"kept: {f['kept']}")
    print(f"dropped by filters: {f['dropped_total'] or 'none'}")
    for comp, counts in f["dropped_by_component"].items():
        print(f"  {comp}: {counts}")
    print(f"bad records: {r['bad_records'] or 'none'}")
    print(f"shards: {r['shard_dir']}")
    print(f"packing_efficiency={r['packing_efficiency']:.4f} mixture_max_error_pp={r['mixture_max_error_pp']:.3f} "
          f"window_max_error_pp={r['window_max_error_pp']:.3f} rows={r['rows']} trainable_tokens={r['trainable_tokens']}")


def inspect_row(shard_dir: str, row: int, split: str = "train") -> str:
    """A packed row as text: trained tokens between ⟦ ⟧, each document headed by `── document j ──`."""
    from transformers import AutoTokenizer

    from north_lightning.datamodules.shards import RowReader, ShardIndex

    index = ShardIndex.load(shard_dir)
    if not 0 <= row < index.rows(split):
        raise IndexError(f"{index.path}: row {row} out of range (0..{index.rows(split) - 1})")
    tok = AutoTokenizer.from_pretrained(index.meta["tokenizer"])
    got = RowReader(index, split).row(row)
    ids, learn, docs = got["input_ids"], got["loss_mask"], got["document_ids"]
    trained = np.zeros(len(ids), dtype=bool)
    trained[1:] = learn[:-1].astype(bool)  # token t+1 is learned where position t carries the loss
    sources = _row_sources(index, row, split)
    out, n_docs = [], int(docs.max()) + 1
    for j in range(n_docs):
        where = np.nonzero(docs == j)[0]
        if not len(where):
            continue
        head = "padding" if j == n_docs - 1 and (ids[where] == index.meta["pad_id"]).all() else f"document {j}"
        origin = f" ({sources[j]})" if j < len(sources) else ""
        out.append(f"── {head}{origin}: {len(where)} tokens, {int(trained[where].sum())} trained ──")
        pieces, cur, state = [], [], None
        for t in where:
            if trained[t] != state and cur:
                pieces.append((state, tok.decode(cur, skip_special_tokens=False)))
                cur = []
            state = trained[t]
            cur.append(int(ids[t]))
        if cur:
            pieces.append((state, tok.decode(cur, skip_special_tokens=False)))
        out.append("".join(f"⟦{text}⟧" if is_trained else text for is_trained, text in pieces))
    return "\n".join(out)


def _row_sources(index: Any, row: int, split: str) -> list[str]:
    """`component / record id` of each document of a row, from the prepare's row provenance."""
    path = index.path / f"{split}_rows.npz"
    if not path.is_file():
        return []
    with np.load(path) as prov:
        docs = prov["docs"][prov["offsets"][row]: prov["offsets"][row + 1]]
    names, metas = [c["name"] for c in index.meta["components"]], {}
    out = []
    for c, chunk, d in docs.tolist():
        if (c, chunk) not in metas:
            metas[(c, chunk)] = json.loads((index.path / "docs" / f"{c:03d}" / f"{chunk:05d}.json").read_text())
        out.append(f"{names[c]} / {metas[(c, chunk)]['record_ids'][d]}")
    return out


def _datamodule(args: argparse.Namespace) -> SFTDataModule:
    from north_lightning.datamodules.sft import SFTDataModule

    init_args = load_data_args(args.config) if args.config else {}
    for key, value in (("mixture", getattr(args, "mixture", None)), ("seq_len", getattr(args, "seq_len", None)),
                       ("tokenizer", getattr(args, "tokenizer", None)), ("max_records_per_component", args.max_records),
                       ("data_dir", args.data_dir), ("num_proc", getattr(args, "num_proc", None))):
        if value:
            init_args[key] = value
    init_args["allow_missing_init"] = True  # data commands read data only; they need no previous-stage weights
    for key in ("report_path", "init_from"):
        init_args.pop(key, None)
    return SFTDataModule(**init_args)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m north_lightning data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("prepare", "render, tokenise, mask and pack a stage's mixture into shards"),
                            ("report", "per-component/per-harness trainable-token shares, filters, packing")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", action="append", default=[], help="stage YAML (repeatable; later files win)")
        p.add_argument("--mixture", help="a mixture spec YAML instead of the stage's")
        p.add_argument("--seq-len", type=int, help="override the stage's seq_len")
        p.add_argument("--tokenizer", help="override the stage's tokenizer directory")
        p.add_argument("--max-records", type=int, help="read at most this many records per component (quick look)")
        p.add_argument("--data-dir", help="override where prepared shards live (data.init_args.data_dir)")
        if name == "prepare":
            p.add_argument("--num-proc", type=int, help="rendering / tokenising processes")
        else:
            p.add_argument("--rows", type=int, help="only the first ROWS rows")
            p.add_argument("--json", help="also write the report as JSON here")
    ins = sub.add_parser("inspect", help="decode one packed row with its loss mask and document boundaries")
    ins.add_argument("shard", help="a prepared shard directory (or its index.json)")
    ins.add_argument("--row", type=int, default=0)
    ins.add_argument("--split", choices=("train", "val"), default="train")
    imp = sub.add_parser("import", help="public trajectory files -> canonical records (Parquet) + report")
    add_import_arguments(imp)
    args = parser.parse_args(argv)
    if args.command == "import":
        return run_import_command(args)
    if args.command == "inspect":
        print(inspect_row(args.shard, args.row, args.split))
        return 0
    if not args.config and not args.mixture:
        parser.error(f"data {args.command} needs --config STAGE.yaml or --mixture MIXTURE.yaml")
    dm = _datamodule(args)
    started = time.monotonic()
    dm.prepare_data()
    dm.setup("fit")
    if args.command == "prepare":
        rows, tokens = dm.index.rows(), int(dm.index.row_stats[:, :-1].sum())
        print(f"rows={rows} trainable_tokens={tokens} seconds={time.monotonic() - started:.1f} shard_dir={dm.index.path}")
        return 0
    report = epoch_report(dm, args.rows)
    print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
