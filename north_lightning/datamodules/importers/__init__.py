"""Importers: public agent-trajectory formats → canonical records (`formats/records.py`) as Parquet shards.

`python -m north_lightning data import --format F SRC --out DIR` (or `import_trajectories`): one module per
format, each naming the upstream producer and version it follows; `sources.py` reads local files, saved HF
datasets and hub datasets; `base.py` runs the loop and writes the per-reason report.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from north_lightning.datamodules.importers.base import (DROP_REASONS, REPORT_NAME, Drop, ImportOptions,
                                                        ImportReport, run_import)
from north_lightning.datamodules.importers.sources import iter_items

# --format name -> module (with `convert`, and `iter_items` where the format is not file rows)
FORMATS = {
    "swe-agent": "north_lightning.datamodules.importers.swe_agent",
    "mini-swe-agent": "north_lightning.datamodules.importers.mini_swe_agent",
    "openhands": "north_lightning.datamodules.importers.openhands",
    "harbor": "north_lightning.datamodules.importers.harbor",
    "messages": "north_lightning.datamodules.importers.messages",
}


def import_trajectories(fmt: str, src: str | Path, out: str | Path, *, hf: bool = False, split: str | None = None,
                        include_unresolved: bool = False, source: str | None = None,
                        shard_size: int = 10_000) -> ImportReport:
    """Import `src` (a file, a directory, a saved dataset; a dataset name with `hf=True`) of format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r}; known formats: {', '.join(FORMATS)}")
    module = importlib.import_module(FORMATS[fmt])
    custom = getattr(module, "iter_items", None)
    if custom is not None and hf:
        raise ValueError(f"format {fmt!r} reads directories; it cannot come from --hf")
    items = custom(src) if custom is not None else iter_items(src, hf=hf, split=split)
    source = source or fmt.replace("-", "_")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", source):
        raise ValueError(f"source name {source!r} must be letters, digits, '_', '.', '-' (it names the shard files)")
    options = ImportOptions(source=source, include_unresolved=include_unresolved)
    return run_import(fmt, items, module.convert, out, options=options, sources=[str(src)], shard_size=shard_size)


__all__ = ["DROP_REASONS", "FORMATS", "REPORT_NAME", "Drop", "ImportOptions", "ImportReport", "import_trajectories"]
