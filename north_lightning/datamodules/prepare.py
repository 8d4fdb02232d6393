"""`data prepare`: render, filter, tokenise, mask and pack an SFT stage's mixture once, into shards on disk.

Why once: rendering and tokenising a real corpus on every rank at every start does not scale (hours of CPU,
the whole corpus in RAM per rank). Prepare does it in `num_proc` processes (records in chunks, the fast
tokenizer batched per chunk), then packs the documents with the mixture sampler and the best-fit packer into
fixed-length rows, and writes memory-mapped arrays a rank streams from (`shards.py`):

    <out_dir>/<mixture>-<key16>/
        index.json                         what a rank reads at setup (config, tokenizer, counts, shards)
        row_stats.npy                      per row: trainable tokens per component, used tokens
        <key16>-train-00000.<array>.npy    input_ids (int32), loss_mask (uint8: position t learns token
                                           t+1), document_ids (int32), position_ids (int32); [rows, seq_len]
        <key16>-val-00000.<array>.npy      the same for the held-out records (val_fraction)
        docs/<component>/<chunk>.*         tokenised documents (intermediate; the chunk's .json last)

`key` is the sha256 of the format version, every setting that changes the rows, the tokenizer (its files
and chat template) and the content of every input file: an unchanged config finds its shards and reuses them,
any change makes new ones. A killed prepare resumes: finished document chunks and row shards are kept (each
is written to a temporary name and renamed when complete) and the index is written last.

The stages live apart: `prepare_config.py` (the config and its key), `prepare_documents.py` (records to
tokenised document chunks, in parallel), `packing.py` (rows), and here the run that ties them and the index.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from north_lightning.datamodules.packing import pack, write_rows
from north_lightning.datamodules.prepare_config import FORMAT_VERSION, PrepareConfig, expected_key, load_tokenizer, shard_dir
from north_lightning.datamodules.prepare_documents import atomic_write, build_documents, load_documents, save_npy

log = logging.getLogger(__name__)


def prepare(cfg: PrepareConfig) -> Path:
    """Prepare (or reuse, or finish) the shards of `cfg`; returns their directory."""
    spec, record, tok_fp, key = expected_key(cfg)
    out = shard_dir(cfg, spec, key)
    if (out / "index.json").is_file():
        log.info("data prepare: %s is up to date", out)
        prepare.last_counts = {"reused": True}  # type: ignore[attr-defined]
        return out
    out.mkdir(parents=True, exist_ok=True)
    docs_dir = out / "docs"
    tok = load_tokenizer(cfg)  # before the workers start, so they inherit transformers already imported
    bad = build_documents(cfg, spec, docs_dir)
    train, val, report, chunk_paths = load_documents(spec, docs_dir)
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    n_comp = len(spec.components)
    rows = pack(train, spec.shares, cfg.seq_len, cfg.seed, cfg.max_open_rows, cfg.epochs)
    train_shards, train_stats = write_rows(rows, train, chunk_paths, out, f"{key[:16]}-train", cfg.seq_len, pad_id,
                                           cfg.rows_per_shard, n_comp)
    val_shards, val_stats = [], np.zeros((0, n_comp + 1), np.int64)
    if any(len(v) for v in val.length):
        val_rows = pack(val, spec.shares, cfg.seq_len, cfg.seed, cfg.max_open_rows, 1.0)
        val_shards, val_stats = write_rows(val_rows, val, chunk_paths, out, f"{key[:16]}-val", cfg.seq_len, pad_id,
                                           cfg.rows_per_shard, n_comp)
    save_npy(str(out / "row_stats.npy"), train_stats)
    save_npy(str(out / "val_row_stats.npy"), val_stats)
    _save_provenance(out / "train_rows.npz", rows, train)  # which documents each row holds (`data inspect`)
    if val_shards:
        _save_provenance(out / "val_rows.npz", val_rows, val)
    counts = getattr(build_documents, "last_counts", {})
    report.kept.update({k: v for k, v in counts.items() if k.endswith(":not_selected")})
    index = {
        "format_version": FORMAT_VERSION, "key": key, "tokenizer": cfg.tokenizer_dir, "chat_template": cfg.chat_template,
        "tokenizer_fingerprint": tok_fp, "config": record, "seq_len": cfg.seq_len, "pad_id": pad_id,
        "rows_per_shard": cfg.rows_per_shard, "train_rows": len(rows), "val_rows": int(len(val_stats)),
        "train_shards": train_shards, "val_shards": val_shards,
        "components": [{"name": c.name, "harness": c.harness, "share": s, "documents": int(len(train.length[i])),
                        "val_documents": int(len(val.length[i])), "trainable_tokens": int(train.trainable[i].sum())}
                       for i, (c, s) in enumerate(zip(spec.components, spec.shares))],
        "filters": report.to_dict(), "bad_records": dict(bad.counts), "bad_record_examples": bad.examples,
    }
    atomic_write(out / "index.json", json.dumps(index, indent=1))
    prepare.last_counts = counts  # type: ignore[attr-defined]
    log.info("data prepare: %d train rows, %d val rows in %s", len(rows), len(val_stats), out)
    return out


def _save_provenance(path: Path, rows: list[list[tuple[int, int]]], table: Any) -> None:
    """Per row, its documents as (component, chunk, index of the document in the chunk's metadata)."""
    offsets = np.cumsum([0] + [len(r) for r in rows])
    docs = np.zeros((int(offsets[-1]), 3), dtype=np.int32)
    k = 0
    for row in rows:
        for c, d in row:
            docs[k] = (c, table.chunk[c][d], table.index[c][d])
            k += 1
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, offsets=offsets, docs=docs)
    os.replace(tmp, path)

