"""Where public trajectories come from: local JSON / JSONL / Parquet files, directories of them, directories
written by HF `datasets` (`Dataset.save_to_disk`), and hub datasets by name (`datasets.load_dataset`).

Every item is yielded with a `where` string (`file:line`, `file:row N`, `name:row N`) so that an importer's
drop or error names the exact place in the input. A JSONL line that is not JSON is yielded as a
`SourceError`, never skipped, so the importer counts it. Rows are read one Parquet row group / one dataset
row at a time: importing a large corpus never holds it in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# File suffixes read as one JSON document (a `.traj` of SWE-agent, a mini-SWE-agent trajectory), as one
# JSON value per line, or as a Parquet table.
JSON_SUFFIXES = (".json", ".traj")
JSONL_SUFFIXES = (".jsonl",)
PARQUET_SUFFIXES = (".parquet",)
# What `Dataset.save_to_disk` / `DatasetDict.save_to_disk` leave in their directory.
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class SourceError:
    """An input item that could not even be decoded (bad JSON line, unreadable file)."""

    message: str


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in SAVED_DATASET_MARKERS)


def iter_items(src: str | Path, *, hf: bool = False, split: str | None = None) -> Iterator[tuple[Any, str]]:
    """Yield `(item, where)` for every record-sized item of `src`. `item` is a decoded JSON value / a row dict,
    or a `SourceError`. With `hf=True`, `src` is a dataset name (or a local directory of data files) given
    to `datasets.load_dataset`."""
    if hf:
        yield from _iter_hf(str(src), split)
        return
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"import source not found: {path}")
    if is_saved_dataset(path):
        yield from _iter_saved_dataset(path, split)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (*JSON_SUFFIXES, *JSONL_SUFFIXES,
                                                                                   *PARQUET_SUFFIXES))
        if not files:
            raise ValueError(f"{path}: no .json / .traj / .jsonl / .parquet files and not a saved dataset")
        for file in files:
            yield from iter_file(file)
    else:
        yield from iter_file(path)


def iter_file(path: Path) -> Iterator[tuple[Any, str]]:
    if path.suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(path)
    elif path.suffix in JSON_SUFFIXES:
        yield _read_json(path), str(path)
    elif path.suffix in PARQUET_SUFFIXES:
        yield from _iter_parquet(path)
    else:
        raise ValueError(f"{path}: unknown input format {path.suffix!r} (expected .json, .traj, .jsonl, .parquet)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return SourceError(f"not a JSON document ({exc})")


def _iter_jsonl(path: Path) -> Iterator[tuple[Any, str]]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield json.loads(raw), f"{path}:{line_no}"
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield SourceError(f"malformed JSON line ({exc})"), f"{path}:{line_no}"


def _iter_parquet(path: Path) -> Iterator[tuple[Any, str]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    row = 0
    for group in range(pf.num_row_groups):
        for item in pf.read_row_group(group).to_pylist():  # one row group in memory at a time
            yield item, f"{path}:row {row}"
            row += 1


def _iter_dataset(ds: Any, name: str) -> Iterator[tuple[Any, str]]:
    for i in range(len(ds)):
        yield ds[i], f"{name}:row {i}"


def _pick_split(ds: Any, name: str, split: str | None) -> Any:
    """A DatasetDict needs a split: the one asked for, else its only one, else an error listing them."""
    if not hasattr(ds, "keys"):
        return ds
    splits = list(ds.keys())
    if split is not None:
        if split not in splits:
            raise ValueError(f"{name}: no split {split!r}; splits: {', '.join(splits)}")
        return ds[split]
    if len(splits) != 1:
        raise ValueError(f"{name}: several splits ({', '.join(splits)}); choose one with --split")
    return ds[splits[0]]


def _iter_saved_dataset(path: Path, split: str | None) -> Iterator[tuple[Any, str]]:
    import datasets

    ds = _pick_split(datasets.load_from_disk(str(path)), str(path), split)
    yield from _iter_dataset(ds, str(path))


def _iter_hf(name: str, split: str | None) -> Iterator[tuple[Any, str]]:
    """`datasets.load_dataset(name)`: a hub dataset where a hub is reachable, or a local directory of data
    files (how the tests exercise this path)."""
    import datasets

    ds = _pick_split(datasets.load_dataset(name), name, split)
    yield from _iter_dataset(ds, name)
