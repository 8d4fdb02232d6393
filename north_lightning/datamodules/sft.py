"""The cascaded SFT datamodule: records → filters → harness rendering → chat template → mixture → packing.

One stage of the cascade is one YAML: its mixture spec, its context length (`seq_len`), and, for a later
stage, the exported weights of the previous one (`init_from`), which must exist unless the config says
`allow_missing_init: true`: a stage 2 that silently trained from random weights would waste a 128K run.

Determinism and exact resume: documents are rendered with a seed derived from (seed, component, record id),
the sampler and the packer are pure functions of the seed, so packed batch `k` depends only on (data,
config, k). The datamodule stores how many batches reached the training step (`on_before_batch_transfer`,
so loader prefetching cannot shift it) in the checkpoint and a resumed run continues at the next batch.
Batches follow the packed-batch contract plus `window_trainable_tokens` (trainable tokens of the gradient
accumulation window, for token-normalised loss) like `jsonl.JsonlChatDataModule`.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from north_lightning.assets import tiny_tokenizer_path
from north_lightning.datamodules.filters import COMMON_CONTROL_STRINGS, FilterConfig, FilterError, FilterReport, check_messages
from north_lightning.formats.harnesses import get_harness
from north_lightning.datamodules.mixture import MixtureSampler, MixtureSpec
from north_lightning.datamodules.packing import BestFitPacker, pack_rows
from north_lightning.datamodules.position import record_batch_position
from north_lightning.formats.records import BadRecordCounter, iter_records
from north_lightning.datamodules.tokenize import Document, chat_tokens, control_strings, shifted_targets

log = logging.getLogger(__name__)


# Records fixed to the key harness may also be rendered by these (same tools, other spelling).
COMPATIBLE = {"swe_agent_xml": ("swe_agent", "swe_agent_xml"), "swe_agent": ("swe_agent", "swe_agent_xml"),
              "mini_swe_agent": ("mini_swe_agent", "mini_swe_agent_v2"),
              "mini_swe_agent_v2": ("mini_swe_agent", "mini_swe_agent_v2"),
              "terminus2": ("terminus2", "terminus2_xml"), "terminus2_xml": ("terminus2", "terminus2_xml")}


def stable_seed(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def is_validation(record_id: str, val_fraction: float) -> bool:
    return val_fraction > 0 and stable_seed("val", record_id) % 10_000 < val_fraction * 10_000


@dataclass
class DocumentPools:
    """Tokenised documents per mixture component (train and validation) and what was dropped on the way."""

    train: list[list[Document]]
    val: list[list[Document]]
    filters: FilterReport
    bad_records: BadRecordCounter


def build_pools(spec: MixtureSpec, tokenizer: Any, seq_len: int, *, seed: int = 0,
                filters: FilterConfig | None = None, on_bad_record: str = "count",
                val_fraction: float = 0.0, max_records: int | None = None, render_variants: int = 1) -> DocumentPools:
    """Read, filter, render and tokenise every component's records (streaming the shards); `max_records`
    caps the selected records per component (quick runs and tests); `render_variants` renders each record
    that many times with different template seeds (prompt paraphrases, tool orders), each its own document."""
    filters = filters or FilterConfig()
    report, bad = FilterReport(), BadRecordCounter()
    controls = tuple(sorted(set(COMMON_CONTROL_STRINGS) | set(control_strings(tokenizer))))
    train: list[list[Document]] = []
    val: list[list[Document]] = []
    for ci, comp in enumerate(spec.components):
        harness = get_harness(comp.harness, **dict(comp.harness_args))
        pool_t, pool_v = [], []
        selected = 0
        for record, _ in iter_records(list(comp.paths), on_error="fail" if on_bad_record == "fail" else "count",
                                      counter=bad):
            fixed_elsewhere = record.harness is not None and record.harness not in COMPATIBLE.get(comp.harness, (comp.harness,))
            if fixed_elsewhere or (comp.source and record.source != comp.source) or (comp.verified_only and not record.verified):
                report.kept[f"{comp.name}:not_selected"] += 1
                continue
            if max_records is not None and selected >= max_records:
                break
            selected += 1
            for variant in range(render_variants):
                render_seed = stable_seed(seed, comp.name, record.id, variant)
                reason, doc = _document(harness, record, render_seed, tokenizer, seq_len, filters, controls, ci)
                if reason is not None:
                    if filters.on_reject == "fail":
                        raise FilterError(f"{comp.name}: record {record.id!r} rejected: {reason}")
                    report.drop(comp.name, reason, f"{comp.name}/{record.id}")
                    break  # the checks depend on the record, not on the template: count it once
                report.kept[comp.name] += 1
                (pool_v if is_validation(record.id, val_fraction) else pool_t).append(doc)
        if not pool_t:
            raise ValueError(
                f"mixture component {comp.name!r} ({', '.join(comp.paths)}) has no training documents after "
                f"filtering; dropped: {dict(report.dropped.get(comp.name, {}))}, bad records: {dict(bad.counts)}"
            )
        train.append(pool_t)
        val.append(pool_v)
    return DocumentPools(train, val, report, bad)


def _document(harness: Any, record: Any, render_seed: int, tokenizer: Any, seq_len: int, filters: FilterConfig,
              controls: tuple[str, ...], component: int) -> tuple[str | None, Document | None]:
    try:
        messages = harness.render(record, seed=render_seed)
    except (ValueError, KeyError) as err:
        log.debug("unrenderable %s: %s", record.id, err)
        return "unrenderable", None
    reason = check_messages(harness, record, messages, filters.checks, controls)
    if reason is not None:
        return reason, None
    tools = record.tools if record.tools is not None else harness.tools_for(render_seed)
    ids, mask = chat_tokens(tokenizer, messages, tools)
    if "over_long" in filters.checks and len(ids) > seq_len:
        return "over_long", None
    ids, mask = ids[:seq_len], mask[:seq_len]
    doc = Document(ids, shifted_targets(ids, mask), component, record.id, record.source)
    if doc.num_trainable == 0:
        return "no_trainable_tokens", None
    return None, doc


class PackedMixtureStream(IterableDataset):
    """Endless stream of packed batches; row `i` and batch `k` depend only on (pools, shares, seed).

    Rank `r` of `W` reads global batches `r, r+W, ...`; each batch is `batch_size` consecutive rows.
    """

    def __init__(self, pools: list[list[Document]], shares: list[float], seq_len: int, batch_size: int, seed: int,
                 pad_id: int, start_batch: int = 0, rank: int = 0, world_size: int = 1, accumulate: int = 1,
                 max_open_rows: int = 256) -> None:
        super().__init__()
        self.pools, self.seq_len, self.batch_size, self.pad_id = pools, seq_len, batch_size, pad_id
        self.start_batch, self.rank, self.world_size, self.accumulate = start_batch, rank, world_size, accumulate
        self.sampler = MixtureSampler([[d.num_trainable for d in p] for p in pools], shares, seed)
        min_len = min(d.length for p in pools for d in p)
        self.packer = BestFitPacker(seq_len, min_length=min_len, max_open=max_open_rows)
        self.rows: list[list[tuple[int, int]]] = []

    def row(self, i: int) -> list[tuple[int, int]]:
        while len(self.rows) <= i:
            c, d = self.sampler.next()
            self.rows.extend(self.packer.add((c, d), self.pools[c][d].length))
        return self.rows[i]

    def _docs(self, row: list[tuple[int, int]]) -> list[Document]:
        return [self.pools[c][d] for c, d in row]

    def _global_batch(self, local_index: int) -> int:
        return local_index * self.world_size + self.rank

    def _trainable(self, local_index: int) -> int:
        first = self._global_batch(local_index) * self.batch_size
        return sum(d.num_trainable for r in range(first, first + self.batch_size) for d in self._docs(self.row(r)))

    def batch(self, local_index: int) -> dict[str, torch.Tensor]:
        first = self._global_batch(local_index) * self.batch_size
        rows = [[(d.input_ids, d.targets) for d in self._docs(self.row(r))] for r in range(first, first + self.batch_size)]
        out = pack_rows(rows, self.seq_len, self.pad_id)
        window_start = local_index - local_index % self.accumulate
        window = sum(self._trainable(i) for i in range(window_start, window_start + self.accumulate))
        out["window_trainable_tokens"] = torch.tensor(window, dtype=torch.long)
        out["batch_index"] = torch.tensor(local_index, dtype=torch.long)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        k = self.start_batch
        while True:
            yield self.batch(k)
            k += 1


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
    """Packed SFT batches from a trainable-token mixture of harness-rendered trajectories (see module doc).

    Args:
        mixture: mixture spec YAML path (or dict), see `datamodules/mixture.py`.
        tokenizer: HF tokenizer directory with a `{% generation %}` chat template; default: the tiny one.
        seq_len: packed row length (the stage's context); longer samples are filtered (`over_long`).
        batch_size: packed rows per batch per data-parallel rank.
        seed: seeds rendering variation, sampling order and packing.
        filter_checks: which filters run (default all, see `filters.py`); on_reject: drop | fail.
        on_bad_record: count | fail, for malformed lines / missing fields in the shards.
        report_path: where the JSON filter report is written at setup (None: not written).
        val_fraction: share of records (by id hash) held out for validation; val_batches: how many.
        init_from: the previous stage's exported weights (stage 2); allow_missing_init skips the check.
        max_open_rows: open rows of the best-fit packer (more: tighter packing, more reordering).
        max_records_per_component: cap on the records each component reads (quick runs, tests).
        render_variants: template variants rendered per record (data augmentation; each is a document).
        chat_template: a Jinja file replacing the tokenizer's chat template, for tokenizers whose template has
            no `{% generation %}` blocks (without them no token would be marked as the assistant's).
    """

    def __init__(self, mixture: str | dict, tokenizer: str | None = None, seq_len: int = 2048, batch_size: int = 1,
                 seed: int = 0, filter_checks: list[str] | None = None, on_reject: str = "drop",
                 on_bad_record: str = "count", report_path: str | None = None, val_fraction: float = 0.0,
                 val_batches: int = 2, init_from: str | None = None, allow_missing_init: bool = False,
                 max_open_rows: int = 256, max_records_per_component: int | None = None,
                 chat_template: str | None = None, render_variants: int = 1) -> None:
        super().__init__()
        if render_variants < 1:
            raise ValueError(f"render_variants must be >= 1, got {render_variants}")
        self.render_variants = render_variants
        self.max_records_per_component = max_records_per_component
        self.chat_template = chat_template
        self.spec = MixtureSpec.load(mixture)
        self.tokenizer_path = str(tokenizer or tiny_tokenizer_path())
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.filters = FilterConfig(tuple(filter_checks) if filter_checks is not None else FilterConfig().checks, on_reject)
        if on_bad_record not in ("count", "fail"):
            raise ValueError(f"on_bad_record must be 'count' or 'fail', got {on_bad_record!r}")
        self.on_bad_record, self.report_path = on_bad_record, report_path
        self.val_fraction, self.val_batches = val_fraction, val_batches
        self.init_from, self.allow_missing_init, self.max_open_rows = init_from, allow_missing_init, max_open_rows
        require_init_weights(init_from, allow_missing_init)  # fail at config time, before any model is built
        self.consumed_batches = 0
        self.pools: DocumentPools | None = None
        self.tokenizer: Any = None

    def prepare_data(self) -> None:
        require_init_weights(self.init_from, self.allow_missing_init)

    def setup(self, stage: str | None = None) -> None:
        require_init_weights(self.init_from, self.allow_missing_init)
        if self.pools is not None:
            return
        from transformers import AutoTokenizer

        if not Path(self.tokenizer_path).is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {self.tokenizer_path} (data.init_args.tokenizer: "
                                    "the base model's or the previous stage's HF directory)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        if self.chat_template is not None:
            self.tokenizer.chat_template = Path(self.chat_template).read_text()
        self.pools = build_pools(self.spec, self.tokenizer, self.seq_len, seed=self.seed, filters=self.filters,
                                 on_bad_record=self.on_bad_record, val_fraction=self.val_fraction,
                                 max_records=self.max_records_per_component, render_variants=self.render_variants)
        dropped = self.pools.filters.totals()
        if dropped or self.pools.bad_records.counts:
            log.warning("SFT data: dropped by filters %s, bad records %s", dict(dropped), self.pools.bad_records.counts)
        if self.report_path:
            bad = self.pools.bad_records
            report = self.pools.filters.to_dict() | {"bad_records": dict(bad.counts), "bad_record_examples": bad.examples}
            Path(self.report_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.report_path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)

    def stream(self, start_batch: int = 0, rank: int = 0, world_size: int = 1, accumulate: int = 1,
               split: str = "train") -> PackedMixtureStream:
        assert self.pools is not None, "setup() first"
        pools = self.pools.train if split == "train" else [p for p in self.pools.val if p]
        shares = [s for s, p in zip(self.spec.shares, self.pools.val) if split == "train" or p]
        return PackedMixtureStream(pools, shares, self.seq_len, self.batch_size, self.seed, self.pad_id,
                                   start_batch, rank, world_size, accumulate, self.max_open_rows)

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        stream = self.stream(self.consumed_batches, t.global_rank if t else 0, t.world_size if t else 1,
                             t.accumulate_grad_batches if t else 1)
        return DataLoader(stream, batch_size=None, num_workers=0)

    def val_dataloader(self) -> list[dict[str, torch.Tensor]]:
        assert self.pools is not None, "setup() first"
        if self.val_fraction <= 0 or not any(self.pools.val):
            return []
        stream = self.stream(split="val")
        return [{k: v for k, v in stream.batch(i).items() if k != "batch_index"} for i in range(self.val_batches)]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return record_batch_position(self, batch)

    def state_dict(self) -> dict[str, Any]:
        sizes = [len(p) for p in self.pools.train] if self.pools is not None else None
        return {"consumed_batches": self.consumed_batches, "seed": self.seed, "pool_sizes": sizes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sizes = state_dict.get("pool_sizes")
        if self.pools is not None and sizes is not None and sizes != [len(p) for p in self.pools.train]:
            raise ValueError(f"checkpoint was trained on mixture pools of sizes {sizes}, the data now gives "
                             f"{[len(p) for p in self.pools.train]}: the data changed, exact resume is impossible")
        if state_dict.get("seed", self.seed) != self.seed:
            raise ValueError(f"checkpoint data seed {state_dict['seed']} != configured seed {self.seed}")
        self.consumed_batches = int(state_dict["consumed_batches"])
