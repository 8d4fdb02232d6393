"""Packing documents into fixed token budgets with document boundaries (the packed-batch contract).

Online best fit with a bounded set of open rows: each incoming document goes into the open row whose free
space fits it most tightly; a row is emitted once no document could fit any more, or, when too many rows are
open, the fullest one is emitted. Documents keep (nearly) the order the mixture sampler produced them in, and
the padding stays well under 1% on mixed data, where first-fit in arrival order wastes 10-20%.
Documents never span rows, so a row is a list of whole documents.

This is the one packer of SFT rows: `data prepare` runs it once (`pack`) over the mixture sampler's order and
writes the rows as memory-mapped arrays (`write_rows`), which the datamodule then streams.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from north_lightning.datamodules.mixture import MixtureSampler

# The arrays of a packed row shard, each [rows, seq_len]: loss_mask[t] = 1 where position t learns token t+1.
ARRAYS = ("input_ids", "loss_mask", "document_ids", "position_ids")


@dataclass
class BestFitPacker:
    """Feed `(item, length)` pairs with `add`; finished rows come out of `add` and `flush`.

    Open rows are kept sorted by free space, so finding the tightest fit is a bisection, and a large
    `max_open` (hundreds of rows) stays cheap."""

    seq_len: int
    min_length: int = 1  # the shortest document that may still arrive: a row with less room is done
    max_open: int = 256
    _rooms: list[tuple[int, int]] = field(default_factory=list)  # sorted (free tokens, row id)
    _rows: dict[int, list] = field(default_factory=dict)
    _next_id: int = 0

    def add(self, item: object, length: int) -> list[list]:
        if length > self.seq_len:
            raise ValueError(f"document of {length} tokens does not fit seq_len {self.seq_len}: filter it first")
        done: list[list] = []
        i = bisect.bisect_left(self._rooms, (length, -1))
        if i < len(self._rooms):
            room, row_id = self._rooms.pop(i)
        else:
            if len(self._rooms) >= self.max_open:  # emit the fullest open row (least room, oldest first)
                done.append(self._rows.pop(self._rooms.pop(0)[1]))
            room, row_id = self.seq_len, self._next_id
            self._rows[row_id] = []
            self._next_id += 1
        self._rows[row_id].append(item)
        room -= length
        if room < self.min_length:
            done.append(self._rows.pop(row_id))
        else:
            bisect.insort(self._rooms, (room, row_id))
        return done

    def flush(self) -> list[list]:
        rows = [self._rows[row_id] for _, row_id in self._rooms]
        self._rooms, self._rows = [], {}
        return rows


@dataclass
class DocTable:
    """Every document of one split: where its tokens are (chunk file, offset) and how many it trains."""

    chunk: list[np.ndarray] = field(default_factory=list)  # per component: chunk index of each doc
    start: list[np.ndarray] = field(default_factory=list)
    length: list[np.ndarray] = field(default_factory=list)
    trainable: list[np.ndarray] = field(default_factory=list)
    index: list[np.ndarray] = field(default_factory=list)  # the document's position in its chunk


def pack(table: DocTable, shares: list[float], seq_len: int, seed: int, max_open: int, epochs: float) -> list[list[tuple[int, int]]]:
    """Rows of (component, document) from the trainable-token mixture sampler and the best-fit packer, until
    `epochs` × the split's trainable tokens are in rows; one packer for every SFT row of the project."""
    comps = [c for c in range(len(shares)) if len(table.length[c])]
    sampler = MixtureSampler([table.trainable[c].tolist() for c in comps], [shares[c] for c in comps], seed)
    min_len = int(min(table.length[c].min() for c in comps))
    packer = BestFitPacker(seq_len, min_length=min_len, max_open=max_open)
    target = epochs * sum(int(table.trainable[c].sum()) for c in comps)
    rows: list[list[tuple[int, int]]] = []
    while sum(sampler.tokens) < target:
        j, d = sampler.next()
        rows.extend(packer.add((comps[j], d), int(table.length[comps[j]][d])))
    rows.extend(packer.flush())
    return rows


def write_rows(rows: list[list[tuple[int, int]]], table: DocTable, chunk_paths: list[list[str]], out: Path,
               prefix: str, seq_len: int, pad_id: int, rows_per_shard: int, n_components: int) -> tuple[list[str], np.ndarray]:
    """Row shards (skipping complete ones, for resume) and per-row stats [trainable per component..., used]."""
    stats = np.zeros((len(rows), n_components + 1), dtype=np.int64)
    for r, row in enumerate(rows):
        for c, d in row:
            stats[r, c] += table.trainable[c][d]
            stats[r, -1] += table.length[c][d]
    names, cache = [], {}

    def tokens(c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
        k = int(table.chunk[c][d])
        if (c, k) not in cache:
            if len(cache) > 64:
                cache.clear()
            base = chunk_paths[c][k]
            cache[(c, k)] = (np.load(f"{base}.ids.npy", mmap_mode="r"), np.load(f"{base}.mask.npy", mmap_mode="r"))
        ids, mask = cache[(c, k)]
        s, n = int(table.start[c][d]), int(table.length[c][d])
        return ids[s: s + n], mask[s: s + n]

    for shard, first in enumerate(range(0, len(rows), rows_per_shard)):
        name = f"{prefix}-{shard:05d}"
        names.append(name)
        if all((out / f"{name}.{a}.npy").is_file() for a in ARRAYS):
            continue
        part = rows[first: first + rows_per_shard]
        tmp = {a: out / f"{name}.{a}.tmp{os.getpid()}.npy" for a in ARRAYS}  # renamed when complete
        arrays = {a: np.lib.format.open_memmap(tmp[a], mode="w+", dtype=np.uint8 if a == "loss_mask" else np.int32,
                                               shape=(len(part), seq_len)) for a in ARRAYS}
        arrays["input_ids"][:] = pad_id
        for r, row in enumerate(part):
            offset = 0
            for j, (c, d) in enumerate(row):
                ids, mask = tokens(c, d)
                n = len(ids)
                arrays["input_ids"][r, offset: offset + n] = ids
                arrays["loss_mask"][r, offset: offset + n] = mask
                arrays["document_ids"][r, offset: offset + n] = j
                arrays["position_ids"][r, offset: offset + n] = np.arange(n)
                offset += n
            arrays["document_ids"][r, offset:] = len(row)  # the padding tail is its own document
            arrays["position_ids"][r, offset:] = np.arange(seq_len - offset)
        for a, arr in arrays.items():
            arr.flush()
            del arr
        arrays.clear()
        for a in ARRAYS:
            os.replace(tmp[a], out / f"{name}.{a}.npy")
    return names, stats


