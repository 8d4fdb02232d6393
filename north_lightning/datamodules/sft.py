"""The cascaded SFT datamodule: streams the packed rows that `data prepare` wrote (see `prepare.py`).

One stage of the cascade is one YAML: its mixture spec, its context length (`seq_len`), and, for a later
stage, the exported weights of the previous one (`init_from`), which must exist unless the config says
`allow_missing_init: true`: a stage 2 that silently trained from random weights would waste a 128K run.

One path for every SFT token: record → filter → harness render → chat template → tokens + mask → pack, done
once by `data prepare` into content-hashed, memory-mapped shards. `prepare_data` (local rank 0) runs it when
the shards are missing, so `fit` on the tiny demo needs no extra step; for a real corpus run
`python -m north_lightning data prepare --config STAGE.yaml` first (several processes). A rank's `setup` reads
only the index and refuses shards of another config, tokenizer or format version, saying which.

Determinism and exact resume: rows are fixed on disk, and global batch `g` is rows `g*B .. g*B+B-1` (wrapping
after the last row). Rank `r` of `W` reads global batches `r, r+W, ...`; with dataloader workers, worker `w`
of `N` makes the rank's batches `w, w+N, ...`, which the DataLoader hands out in order. The datamodule stores
how many batches reached the training step (`on_before_batch_transfer`, so prefetching cannot shift it) and the
shards' key in the checkpoint; a resumed run continues at the next batch, on the same shards or not at all.
Batches carry `window_trainable_tokens` (trainable tokens of the gradient accumulation window) from the index.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from north_lightning.datamodules.position import record_batch_position
from north_lightning.datamodules.prepare import prepare
from north_lightning.datamodules.prepare_config import PrepareConfig, expected_key, shard_dir
from north_lightning.datamodules.shards import RowReader, ShardIndex, ShardMismatch, check_index, describe_difference

log = logging.getLogger(__name__)


class ShardStream(IterableDataset):
    """Endless packed batches of one split; local batch `k` depends only on the shards and (k, rank, world)."""

    def __init__(self, index: ShardIndex, batch_size: int, start_batch: int = 0, rank: int = 0, world_size: int = 1,
                 accumulate: int = 1, split: str = "train") -> None:
        super().__init__()
        self.index, self.split, self.batch_size = index, split, batch_size
        self.start_batch, self.rank, self.world_size, self.accumulate = start_batch, rank, world_size, accumulate
        self.n_rows = index.rows(split)
        if self.n_rows == 0:
            raise ValueError(f"{index.path}: no {split} rows")
        self.trainable = index.stats(split)[:, :-1].sum(axis=1)
        self.reader: RowReader | None = None

    def rows_of(self, local_index: int) -> list[int]:
        first = (local_index * self.world_size + self.rank) * self.batch_size
        return [(first + j) % self.n_rows for j in range(self.batch_size)]

    def _trainable(self, local_index: int) -> int:
        return int(sum(self.trainable[r] for r in self.rows_of(local_index)))

    def batch(self, local_index: int) -> dict[str, torch.Tensor]:
        if self.reader is None:
            self.reader = RowReader(self.index, self.split)
        out = self.reader.batch(self.rows_of(local_index))
        window_start = local_index - local_index % self.accumulate
        window = sum(self._trainable(i) for i in range(window_start, window_start + self.accumulate))
        out["window_trainable_tokens"] = torch.tensor(window, dtype=torch.long)
        out["batch_index"] = torch.tensor(local_index, dtype=torch.long)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        k = self.start_batch + worker
        while True:
            yield self.batch(k)
            k += workers


def require_init_weights(init_from: str | None, allow_missing_init: bool) -> None:
    """A later cascade stage starts from the previous stage's export; refuse to train without it."""
    if init_from is None or allow_missing_init:
        return
    path = Path(init_from)
    if not (path.is_dir() and any(path.glob("*.safetensors"))) and not (path.is_file() and path.suffix in (".ckpt", ".safetensors")):
        raise FileNotFoundError(
            f"this SFT stage starts from the previous stage's weights at {init_from!r}, but no safetensors "
            "export or checkpoint is there. Run the previous stage and export it first, or set "
            "`data.init_args.allow_missing_init: true` to start without it."
        )


class SFTDataModule(L.LightningDataModule):
    """Packed SFT batches streamed from prepared shards (see module doc).

    Args (the first group decides the rows and is hashed into the shards' key):
        mixture: mixture spec YAML path (or dict), see `datamodules/mixture.py`.
        tokenizer: HF tokenizer directory with a `{% generation %}` chat template; default: the tiny one.
        chat_template: a Jinja file replacing the tokenizer's template, or `north` (North's released format,
            `formats/chat_templates/north.jinja`); without `{% generation %}` blocks nothing would be trained.
        seq_len: packed row length (the stage's context); longer samples are filtered (`over_long`).
        seed: seeds rendering variation, sampling order and packing.
        filter_checks: which filters run (default all, see `filters.py`); on_reject: drop | fail.
        on_bad_record: count | fail, for malformed lines / missing fields in the shards.
        val_fraction: share of records (by id hash) held out for validation.
        max_records_per_component: cap on the records each component reads (quick runs, tests).
        render_variants: template variants rendered per record (data augmentation; each is a document).
        max_open_rows: open rows of the best-fit packer (more: tighter packing, more reordering).
        epochs: passes over the documents' trainable tokens the packed train rows hold (then they repeat).
        chunk_records, rows_per_shard: prepare's unit of work / of resume, and rows per shard file.
    Run settings:
        data_dir: where prepared shards live (`<data_dir>/<mixture>-<key16>/`); prepared: one shard directory
            to use as is (checked against this config); num_proc: prepare processes.
        batch_size: packed rows per batch per data-parallel rank; num_workers: dataloader workers.
        report_path: where the JSON filter report is written at setup (None: not written).
        val_batches: validation batches; init_from / allow_missing_init: the previous stage's weights.
    """

    def __init__(self, mixture: str | dict, tokenizer: str | None = None, seq_len: int = 2048, batch_size: int = 1,
                 seed: int = 0, filter_checks: list[str] | None = None, on_reject: str = "drop",
                 on_bad_record: str = "count", report_path: str | None = None, val_fraction: float = 0.0,
                 val_batches: int = 2, init_from: str | None = None, allow_missing_init: bool = False,
                 max_open_rows: int = 256, max_records_per_component: int | None = None,
                 chat_template: str | None = None, render_variants: int = 1, epochs: float = 1.0,
                 data_dir: str = "data/prepared", prepared: str | None = None, num_proc: int = 1,
                 num_workers: int = 0, chunk_records: int = 256, rows_per_shard: int = 1024) -> None:
        super().__init__()
        self.config = PrepareConfig(
            mixture=mixture, tokenizer=tokenizer, chat_template=chat_template, seq_len=seq_len, seed=seed,
            filter_checks=tuple(filter_checks) if filter_checks is not None else None, on_reject=on_reject,
            on_bad_record=on_bad_record, val_fraction=val_fraction, max_records_per_component=max_records_per_component,
            render_variants=render_variants, max_open_rows=max_open_rows, epochs=epochs, chunk_records=chunk_records,
            rows_per_shard=rows_per_shard, out_dir=data_dir, num_proc=num_proc)
        self.spec = self.config.spec()
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.prepared, self.num_workers, self.report_path = prepared, num_workers, report_path
        self.val_fraction, self.val_batches = val_fraction, val_batches
        self.init_from, self.allow_missing_init = init_from, allow_missing_init
        require_init_weights(init_from, allow_missing_init)  # fail at config time, before any model is built
        self.consumed_batches = 0
        self.index: ShardIndex | None = None

    def prepare_data(self) -> None:
        require_init_weights(self.init_from, self.allow_missing_init)
        if self.prepared is None:
            prepare(self.config)

    def locate(self) -> ShardIndex:
        """The index of this config's shards, checked; never reads the corpus (input hashes come from the
        prepare's cache of (path, size, mtime) → sha256)."""
        spec, record, tok_fp, key = expected_key(self.config)
        if self.prepared is not None:
            index = ShardIndex.load(self.prepared)
            check_index(index, key, record, tok_fp)
            return index
        path = shard_dir(self.config, spec, key)
        if (path / "index.json").is_file():
            return ShardIndex.load(path)
        others = sorted(Path(self.config.out_dir).glob(f"{spec.name}-*/index.json"))
        hint = ""
        if others:
            other = json.loads(others[-1].read_text())
            hint = f" ({others[-1].parent} differs: {describe_difference(other.get('config', {}), record)})"
        raise ShardMismatch(f"no prepared shards for this config at {path}{hint}: run `python -m north_lightning data "
                            "prepare --config STAGE.yaml` (fit runs it itself when prepare_data is called)")

    def setup(self, stage: str | None = None) -> None:
        require_init_weights(self.init_from, self.allow_missing_init)
        if self.index is not None:
            return
        self.index = self.locate()
        meta = self.index.meta
        dropped = meta["filters"]["dropped_total"]
        if dropped or meta["bad_records"]:
            log.warning("SFT data: dropped by filters %s, bad records %s", dropped, meta["bad_records"])
        if self.report_path:
            report = meta["filters"] | {"bad_records": meta["bad_records"], "bad_record_examples": meta["bad_record_examples"]}
            Path(self.report_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.report_path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    @property
    def tokenizer_path(self) -> str:
        """The tokenizer directory (HFExport copies it next to the weights)."""
        return self.config.tokenizer_dir

    @property
    def pad_id(self) -> int:
        assert self.index is not None, "setup() first"
        return int(self.index.meta["pad_id"])

    def stream(self, start_batch: int = 0, rank: int = 0, world_size: int = 1, accumulate: int = 1,
               split: str = "train") -> ShardStream:
        assert self.index is not None, "setup() first"
        return ShardStream(self.index, self.batch_size, start_batch, rank, world_size, accumulate, split)

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        stream = self.stream(self.consumed_batches, t.global_rank if t else 0, t.world_size if t else 1,
                             t.accumulate_grad_batches if t else 1)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=False, prefetch_factor=2 if self.num_workers else None)

    def val_dataloader(self) -> list[dict[str, torch.Tensor]]:
        assert self.index is not None, "setup() first"
        if self.val_fraction <= 0 or self.index.rows("val") == 0:
            return []
        stream = self.stream(split="val")
        return [{k: v for k, v in stream.batch(i).items() if k != "batch_index"} for i in range(self.val_batches)]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return record_batch_position(self, batch)

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_batches": self.consumed_batches, "seed": self.seed,
                "shards": self.index.key if self.index is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        key = state_dict.get("shards")
        if self.index is not None and key is not None and key != self.index.key:
            raise ValueError(f"checkpoint was trained on prepared shards {key[:16]}, this config gives "
                             f"{self.index.key[:16]} ({self.index.path}): the data changed, exact resume is impossible")
        if state_dict.get("seed", self.seed) != self.seed:
            raise ValueError(f"checkpoint data seed {state_dict['seed']} != configured seed {self.seed}")
        self.consumed_batches = int(state_dict["consumed_batches"])
