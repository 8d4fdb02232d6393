"""Reading prepared SFT shards (`prepare.py` writes them): the index, checks, and packed rows from memmaps.

A rank's setup reads `index.json` and the per-row stats (a few numbers per row), never the corpus or the
token arrays: rows are memory-mapped when a batch needs them, so a process touches only the pages of its
own rows and its memory does not grow with the corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from north_lightning.datamodules.packing import ARRAYS
from north_lightning.model.head import IGNORE_INDEX


class ShardMismatch(ValueError):
    """Prepared shards that do not belong to this config; the message says which part differs."""


@dataclass
class ShardIndex:
    path: Path
    meta: dict[str, Any]
    row_stats: np.ndarray  # [train_rows, components + 1]: trainable tokens per component, used tokens
    val_row_stats: np.ndarray

    @staticmethod
    def load(path: str | Path) -> ShardIndex:
        path = Path(path)
        if (path / "index.json").is_file():
            directory = path
        elif path.name == "index.json" or path.suffix == ".npy":
            directory = path.parent
        else:
            raise FileNotFoundError(f"no prepared shards at {path} (no index.json: run `python -m north_lightning "
                                    "data prepare --config STAGE.yaml`, or the prepare was interrupted: rerun it)")
        meta = json.loads((directory / "index.json").read_text())
        return ShardIndex(directory, meta, np.load(directory / "row_stats.npy"), np.load(directory / "val_row_stats.npy"))

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    def rows(self, split: str = "train") -> int:
        return int(self.meta["train_rows" if split == "train" else "val_rows"])

    def stats(self, split: str = "train") -> np.ndarray:
        return self.row_stats if split == "train" else self.val_row_stats


def check_index(index: ShardIndex, key: str, record: dict[str, Any], tokenizer_fp: str) -> None:
    """Refuse shards made by another format version, tokenizer, config or input data, saying which."""
    from north_lightning.datamodules.prepare_config import FORMAT_VERSION

    meta, where = index.meta, index.path
    if meta.get("format_version") != FORMAT_VERSION:
        raise ShardMismatch(f"{where}: shard format version {meta.get('format_version')} != {FORMAT_VERSION} of this "
                            "code: prepare the data again")
    if meta.get("tokenizer_fingerprint") != tokenizer_fp:
        raise ShardMismatch(f"{where}: prepared with another tokenizer or chat template ({meta.get('tokenizer')}, "
                            f"template {meta.get('chat_template')}) than this config's")
    if meta.get("key") != key:
        raise ShardMismatch(f"{where}: content hash {meta.get('key', '')[:16]} != {key[:16]} of this config: "
                            + describe_difference(meta.get("config", {}), record))


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which settings, components or input files differ between two config records."""
    parts = []
    for k in sorted(set(old.get("settings", {})) | set(new.get("settings", {}))):
        a, b = old.get("settings", {}).get(k), new.get("settings", {}).get(k)
        if a != b:
            parts.append(f"setting {k}: {a!r} -> {b!r}")
    old_c = {c["name"]: c for c in old.get("components", [])}
    new_c = {c["name"]: c for c in new.get("components", [])}
    for name in sorted(set(old_c) ^ set(new_c)):
        parts.append(f"component {name!r} {'removed' if name in old_c else 'added'}")
    for name in sorted(set(old_c) & set(new_c)):
        a, b = old_c[name], new_c[name]
        for k in ("harness", "share", "source", "verified_only", "harness_args"):
            if a.get(k) != b.get(k):
                parts.append(f"component {name!r} {k}: {a.get(k)!r} -> {b.get(k)!r}")
        a_in = {i["path"]: i["sha256"] for i in a.get("inputs", [])}
        for i in b.get("inputs", []):
            if a_in.get(i["path"]) != i["sha256"]:
                parts.append(f"input file {i['path']} {'changed' if i['path'] in a_in else 'added'}")
        for p in set(a_in) - {i["path"] for i in b.get("inputs", [])}:
            parts.append(f"input file {p} removed")
    return "; ".join(parts) or "the mixture name differs"


class RowReader:
    """Packed rows of one split, memory-mapped shard by shard on first use (per process: safe after fork)."""

    def __init__(self, index: ShardIndex, split: str = "train") -> None:
        self.index, self.split = index, split
        self.names = index.meta["train_shards" if split == "train" else "val_shards"]
        self.per_shard = int(index.meta["rows_per_shard"])
        self.n_rows = index.rows(split)
        self._open: dict[int, dict[str, np.ndarray]] = {}

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._open:
            self._open[s] = {a: np.load(self.index.path / f"{self.names[s]}.{a}.npy", mmap_mode="r") for a in ARRAYS}
        return self._open[s]

    def row(self, i: int) -> dict[str, np.ndarray]:
        shard = self._shard(i // self.per_shard)
        r = i % self.per_shard
        return {a: shard[a][r] for a in ARRAYS}

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """The packed-batch contract: input_ids, position_ids, document_ids, targets (shifted inside each
        document; IGNORE_INDEX where nothing is learned)."""
        got = [self.row(i) for i in rows]
        ids = np.stack([g["input_ids"] for g in got]).astype(np.int64)
        mask = np.stack([g["loss_mask"] for g in got]).astype(bool)
        targets = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
        targets[:, :-1] = np.where(mask[:, :-1], ids[:, 1:], IGNORE_INDEX)
        return {
            "input_ids": torch.from_numpy(ids),
            "position_ids": torch.from_numpy(np.stack([g["position_ids"] for g in got]).astype(np.int64)),
            "document_ids": torch.from_numpy(np.stack([g["document_ids"] for g in got]).astype(np.int64)),
            "targets": torch.from_numpy(targets),
        }
