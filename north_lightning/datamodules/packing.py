"""Packing documents into fixed token budgets with document boundaries (the packed-batch contract).

Online best fit with a bounded set of open rows: each incoming document goes into the open row whose free
space fits it most tightly; a row is emitted once no document could fit any more, or, when too many rows are
open, the fullest one is emitted. Documents keep (nearly) the order the mixture sampler produced them in, and
the padding stays well under 1% on mixed data, where first-fit in arrival order wastes 10-20%.
Documents never span rows, so a row is a list of whole documents.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from north_lightning.datamodules.tokenize import IGNORE_INDEX


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


def pack_rows(docs_per_row: list[list[tuple[np.ndarray, np.ndarray]]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of (input_ids, targets) documents → the packed-batch tensors.

    position_ids restart at 0 for every document, document_ids number the documents of a row (the padding
    tail gets its own id), and targets are already shifted inside each document (-100 elsewhere), so no token
    is ever trained to predict the next document's first token.
    """
    B, S = len(docs_per_row), seq_len
    input_ids = np.full((B, S), pad_id, dtype=np.int64)
    targets = np.full((B, S), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((B, S), dtype=np.int64)
    document_ids = np.zeros((B, S), dtype=np.int64)
    for b, docs in enumerate(docs_per_row):
        offset = 0
        for j, (ids, tgt) in enumerate(docs):
            n = len(ids)
            input_ids[b, offset : offset + n] = ids
            targets[b, offset : offset + n] = tgt
            position_ids[b, offset : offset + n] = np.arange(n)
            document_ids[b, offset : offset + n] = j
            offset += n
        position_ids[b, offset:] = np.arange(S - offset)
        document_ids[b, offset:] = len(docs)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        "document_ids": torch.from_numpy(document_ids),
        "targets": torch.from_numpy(targets),
    }


def iter_rows(next_doc: Iterator[tuple[object, int]], packer: BestFitPacker) -> Iterator[list]:
    """Rows from an endless stream of (item, length) pairs."""
    for item, length in next_doc:
        yield from packer.add(item, length)
