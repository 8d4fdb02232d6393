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
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from north_lightning.assets import tiny_tokenizer_path
from north_lightning.datamodules.filters import COMMON_CONTROL_STRINGS, FilterConfig, FilterError, FilterReport, check_messages
from north_lightning.datamodules.mixture import MixtureSpec
from north_lightning.datamodules.packing import ARRAYS, DocTable, pack, write_rows
from north_lightning.datamodules.tokenize import chat_tokens, chat_tokens_batch, control_strings
from north_lightning.formats.harnesses import get_harness
from north_lightning.formats.records import BadRecordCounter, iter_records

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Records fixed to the key harness may also be rendered by these (same tools, other spelling).
COMPATIBLE = {"swe_agent_xml": ("swe_agent", "swe_agent_xml"), "swe_agent": ("swe_agent", "swe_agent_xml"),
              "mini_swe_agent": ("mini_swe_agent", "mini_swe_agent_v2"),
              "mini_swe_agent_v2": ("mini_swe_agent", "mini_swe_agent_v2"),
              "terminus2": ("terminus2", "terminus2_xml"), "terminus2_xml": ("terminus2", "terminus2_xml")}


def stable_seed(*parts: object) -> int:
    import zlib

    return zlib.crc32(":".join(map(str, parts)).encode())


def is_validation(record_id: str, val_fraction: float) -> bool:
    return val_fraction > 0 and stable_seed("val", record_id) % 10_000 < val_fraction * 10_000


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides the packed rows (all in the key) plus how to run (`out_dir`, `num_proc`)."""

    mixture: str | dict
    tokenizer: str | None = None
    chat_template: str | None = None  # a Jinja file, or "north" (formats/chat_templates/north.jinja)
    seq_len: int = 2048
    seed: int = 0
    filter_checks: tuple[str, ...] | None = None
    on_reject: str = "drop"
    on_bad_record: str = "count"
    val_fraction: float = 0.0
    max_records_per_component: int | None = None
    render_variants: int = 1
    max_open_rows: int = 256
    epochs: float = 1.0  # train rows hold this many passes over the trainable tokens of all documents
    chunk_records: int = 256
    rows_per_shard: int = 1024
    out_dir: str = "data/prepared"
    num_proc: int = 1

    RUN_ONLY = ("out_dir", "num_proc")

    def __post_init__(self) -> None:
        if self.on_bad_record not in ("count", "fail"):
            raise ValueError(f"on_bad_record must be 'count' or 'fail', got {self.on_bad_record!r}")
        if self.render_variants < 1:
            raise ValueError(f"render_variants must be >= 1, got {self.render_variants}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        FilterConfig(self.checks, self.on_reject)  # validates the names

    @property
    def checks(self) -> tuple[str, ...]:
        return tuple(self.filter_checks) if self.filter_checks is not None else FilterConfig().checks

    @property
    def tokenizer_dir(self) -> str:
        return str(self.tokenizer or tiny_tokenizer_path())

    def spec(self) -> MixtureSpec:
        return MixtureSpec.load(self.mixture)


# ---------------------------------------------------------------- hashing


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FileHashes:
    """Content hashes of input files, cached by (path, size, mtime) in `<out_dir>/.file_hashes.json`, so a
    rank that checks its shards only stats the corpus instead of reading it again."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / ".file_hashes.json"
        try:
            self.cache: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.cache = {}
        self.dirty = False

    def get(self, file: str) -> str:
        p = Path(file).resolve()
        if not p.is_file():
            raise FileNotFoundError(f"data shard not found: {file}")
        st = p.stat()
        hit = self.cache.get(str(p))
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = _sha256_file(p)
        self.cache[str(p)] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.cache, sort_keys=True))
            os.replace(tmp, self.path)


def load_tokenizer(cfg: PrepareConfig) -> Any:
    from transformers import AutoTokenizer

    if not Path(cfg.tokenizer_dir).is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {cfg.tokenizer_dir} (data.init_args.tokenizer: "
                                "the base model's or the previous stage's HF directory)")
    tok = AutoTokenizer.from_pretrained(cfg.tokenizer_dir)
    if cfg.chat_template == "north":
        from north_lightning.formats.command_a import with_north_template

        with_north_template(tok)
    elif cfg.chat_template is not None:
        tok.chat_template = Path(cfg.chat_template).read_text()
    return tok


def tokenizer_fingerprint(cfg: PrepareConfig) -> str:
    """The tokenizer's files and the chat template in effect (a changed template changes every mask)."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        f = Path(cfg.tokenizer_dir) / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    if cfg.chat_template is not None:
        from north_lightning.formats.command_a import TEMPLATE_PATH

        h.update(b"template\0" + (TEMPLATE_PATH if cfg.chat_template == "north" else Path(cfg.chat_template)).read_bytes())
    return h.hexdigest()


def config_record(cfg: PrepareConfig, spec: MixtureSpec, hashes: FileHashes) -> dict[str, Any]:
    """The settings and inputs the rows depend on, as plain JSON (stored in the index, diffed on mismatch)."""
    settings = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in PrepareConfig.RUN_ONLY
                and f.name not in ("mixture", "tokenizer", "chat_template", "filter_checks")}
    settings["filter_checks"] = list(cfg.checks)
    components = []
    for c in spec.components:
        components.append({"name": c.name, "harness": c.harness, "share": c.share, "source": c.source,
                           "verified_only": c.verified_only, "harness_args": [list(a) for a in c.harness_args],
                           "inputs": [{"path": p, "sha256": hashes.get(p)} for p in c.paths]})
    return {"format_version": FORMAT_VERSION, "settings": settings, "mixture": spec.name, "components": components}


def shard_key(record: dict[str, Any], tokenizer_fp: str) -> str:
    blob = json.dumps({"config": record, "tokenizer": tokenizer_fp}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def shard_dir(cfg: PrepareConfig, spec: MixtureSpec, key: str) -> Path:
    return Path(cfg.out_dir) / f"{spec.name}-{key[:16]}"


# ---------------------------------------------------------------- documents (parallel)

_WORKER: dict[str, Any] = {}


def _init_worker(cfg: PrepareConfig) -> None:
    tok = load_tokenizer(cfg)
    spec = cfg.spec()
    _WORKER.update(cfg=cfg, tok=tok, spec=spec, harnesses={},
                   controls=tuple(sorted(set(COMMON_CONTROL_STRINGS) | set(control_strings(tok)))))


def _harness(ci: int) -> Any:
    if ci not in _WORKER["harnesses"]:
        comp = _WORKER["spec"].components[ci]
        _WORKER["harnesses"][ci] = get_harness(comp.harness, **dict(comp.harness_args))
    return _WORKER["harnesses"][ci]


def render_checked(harness: Any, record: Any, render_seed: int | None, checks: tuple[str, ...],
                   controls: tuple[str, ...]) -> tuple[str | None, list[dict[str, Any]]]:
    """Render a record through a harness and run the message checks: (reject reason or None, messages)."""
    try:
        messages = harness.render(record, seed=render_seed)
    except (ValueError, KeyError):
        return "unrenderable", []
    return check_messages(harness, record, messages, checks, controls), messages


def record_reject_reason(harness: Any, record: Any, tokenizer: Any, seq_len: int, checks: tuple[str, ...],
                         controls: tuple[str, ...], render_seed: int | None = None) -> str | None:
    """Why `prepare` would drop this one record in this harness (render, message checks, length, no trainable
    token), or None: for callers that vet single records before writing them (`synth`), the same rules."""
    reason, messages = render_checked(harness, record, render_seed, checks, controls)
    if reason is not None:
        return reason
    tools = record.tools if record.tools is not None else harness.tools_for(render_seed)
    ids, mask = chat_tokens(tokenizer, messages, tools)
    if "over_long" in checks and len(ids) > seq_len:
        return "over_long"
    return None if mask[1:seq_len].any() else "no_trainable_tokens"


def _process_chunk(job: tuple[int, list[Any], str]) -> str:
    """Render, filter and tokenise one chunk of records; write its arrays and (last) its .json."""
    ci, records, base = job
    cfg: PrepareConfig = _WORKER["cfg"]
    comp = _WORKER["spec"].components[ci]
    harness = _harness(ci)
    report = FilterReport()
    pending: list[tuple[Any, int, list, Any]] = []
    for record in records:
        for variant in range(cfg.render_variants):
            render_seed = stable_seed(cfg.seed, comp.name, record.id, variant)
            reason, messages = render_checked(harness, record, render_seed, cfg.checks, _WORKER["controls"])
            if reason is not None:
                if cfg.on_reject == "fail":
                    raise FilterError(f"{comp.name}: record {record.id!r} rejected: {reason}")
                report.drop(comp.name, reason, f"{comp.name}/{record.id}")
                break  # the checks depend on the record, not on the template: count it once
            tools = record.tools if record.tools is not None else harness.tools_for(render_seed)
            pending.append((record, variant, messages, tools))
    encoded = chat_tokens_batch(_WORKER["tok"], [(m, t) for _, _, m, t in pending])
    ids_out, mask_out, offsets, trainable, val, rec_ids = [], [], [0], [], [], []
    dropped_ids: set[str] = set()
    for (record, _, _, _), (ids, mask) in zip(pending, encoded):
        if record.id in dropped_ids:
            continue
        if "over_long" in cfg.checks and len(ids) > cfg.seq_len:
            reason = "over_long"
        else:
            ids, mask = ids[: cfg.seq_len], mask[: cfg.seq_len]
            learn = np.zeros(len(ids), dtype=np.uint8)
            learn[:-1] = mask[1:]  # position t learns token t+1
            reason = None if learn.any() else "no_trainable_tokens"
        if reason is not None:
            if cfg.on_reject == "fail":
                raise FilterError(f"{comp.name}: record {record.id!r} rejected: {reason}")
            report.drop(comp.name, reason, f"{comp.name}/{record.id}")
            dropped_ids.add(record.id)
            continue
        ids_out.append(ids)
        mask_out.append(learn)
        offsets.append(offsets[-1] + len(ids))
        trainable.append(int(learn.sum()))
        val.append(is_validation(record.id, cfg.val_fraction))
        rec_ids.append(record.id)
    # a record dropped at a later variant loses its earlier variants too (counted once, as above)
    keep = [i for i, r in enumerate(rec_ids) if r not in dropped_ids]
    if len(keep) != len(rec_ids):
        ids_out, mask_out = [ids_out[i] for i in keep], [mask_out[i] for i in keep]
        lengths = [len(x) for x in ids_out]
        offsets = [0] + list(np.cumsum(lengths).tolist())
        trainable, val, rec_ids = [trainable[i] for i in keep], [val[i] for i in keep], [rec_ids[i] for i in keep]
    report.kept[comp.name] += len(rec_ids)
    _save_npy(f"{base}.ids.npy", np.concatenate(ids_out) if ids_out else np.zeros(0, np.int32))
    _save_npy(f"{base}.mask.npy", np.concatenate(mask_out) if mask_out else np.zeros(0, np.uint8))
    meta = {"offsets": offsets, "trainable": trainable, "val": val, "record_ids": rec_ids,
            "kept": dict(report.kept), "dropped": {k: dict(v) for k, v in report.dropped.items()},
            "examples": report.examples}
    _atomic_write(Path(f"{base}.json"), json.dumps(meta))
    return base


def _save_npy(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _chunk_jobs(cfg: PrepareConfig, spec: MixtureSpec, docs_dir: Path, bad: BadRecordCounter, done: Counter):
    """(component, records, chunk base path) for every chunk not finished yet; counts finished ones."""
    for ci, comp in enumerate(spec.components):
        comp_dir = docs_dir / f"{ci:03d}"
        comp_dir.mkdir(parents=True, exist_ok=True)
        chunk: list[Any] = []
        n_chunk = selected = 0
        records = iter_records(list(comp.paths), on_error="fail" if cfg.on_bad_record == "fail" else "count", counter=bad)
        for record, _ in records:
            fixed_elsewhere = record.harness is not None and record.harness not in COMPATIBLE.get(comp.harness, (comp.harness,))
            if fixed_elsewhere or (comp.source and record.source != comp.source) or (comp.verified_only and not record.verified):
                done[f"{comp.name}:not_selected"] += 1
                continue
            if cfg.max_records_per_component is not None and selected >= cfg.max_records_per_component:
                break
            selected += 1
            chunk.append(record)
            if len(chunk) == cfg.chunk_records:
                yield from _job(ci, chunk, comp_dir / f"{n_chunk:05d}", done)
                chunk, n_chunk = [], n_chunk + 1
        if chunk or n_chunk == 0:
            yield from _job(ci, chunk, comp_dir / f"{n_chunk:05d}", done)


def _job(ci: int, chunk: list[Any], base: Path, done: Counter):
    if Path(f"{base}.json").is_file():
        done["reused_chunks"] += 1
        return
    yield ci, chunk, str(base)


def build_documents(cfg: PrepareConfig, spec: MixtureSpec, docs_dir: Path) -> BadRecordCounter:
    bad, done = BadRecordCounter(), Counter()
    jobs = _chunk_jobs(cfg, spec, docs_dir, bad, done)
    if cfg.num_proc <= 1:
        _init_worker(cfg)
        for job in jobs:
            _process_chunk(job)
            done["new_chunks"] += 1
    else:
        # fork where there is one: the workers inherit the imported modules (transformers takes seconds to
        # import) instead of paying for them again; they use no threads the parent started
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(cfg.num_proc, initializer=_init_worker, initargs=(cfg,)) as pool:
            for _ in pool.imap(_process_chunk, jobs):
                done["new_chunks"] += 1
    log.info("data prepare: %d document chunks written, %d reused", done["new_chunks"], done["reused_chunks"])
    build_documents.last_counts = dict(done)  # type: ignore[attr-defined]
    return bad


# ---------------------------------------------------------------- reading the documents back


def load_documents(spec: MixtureSpec, docs_dir: Path) -> tuple[DocTable, DocTable, FilterReport, list[list[str]]]:
    train, val, report = DocTable(), DocTable(), FilterReport()
    chunk_paths: list[list[str]] = []
    for ci, comp in enumerate(spec.components):
        paths = sorted(str(p)[: -len(".json")] for p in (docs_dir / f"{ci:03d}").glob("*.json"))
        chunk_paths.append(paths)
        cols: dict[bool, list[list]] = {False: [[], [], [], [], []], True: [[], [], [], [], []]}
        for k, base in enumerate(paths):
            meta = json.loads(Path(f"{base}.json").read_text())
            report.kept.update(meta["kept"])
            for name, counts in meta["dropped"].items():
                report.dropped.setdefault(name, Counter()).update(counts)
            for reason, ex in meta["examples"].items():
                report.examples.setdefault(reason, []).extend(ex[: 5 - len(report.examples.get(reason, []))])
            off = meta["offsets"]
            for d, is_val in enumerate(meta["val"]):
                col = cols[bool(is_val)]
                col[0].append(k), col[1].append(off[d]), col[2].append(off[d + 1] - off[d]), col[3].append(meta["trainable"][d])
                col[4].append(d)
        for table, is_val in ((train, False), (val, True)):
            c = cols[is_val]
            table.chunk.append(np.asarray(c[0], np.int32))
            table.start.append(np.asarray(c[1], np.int64))
            table.length.append(np.asarray(c[2], np.int64))
            table.trainable.append(np.asarray(c[3], np.int64))
            table.index.append(np.asarray(c[4], np.int32))
        if not len(train.length[ci]):
            raise ValueError(f"mixture component {comp.name!r} ({', '.join(comp.paths)}) has no training documents "
                             f"after filtering; dropped: {dict(report.dropped.get(comp.name, {}))}")
    return train, val, report, chunk_paths


# ---------------------------------------------------------------- entry point


def expected_key(cfg: PrepareConfig) -> tuple[MixtureSpec, dict[str, Any], str, str]:
    """(spec, config record, tokenizer fingerprint, key) without touching the shards."""
    spec = cfg.spec()
    hashes = FileHashes(cfg.out_dir)
    record = config_record(cfg, spec, hashes)
    hashes.save()
    tok_fp = tokenizer_fingerprint(cfg)
    return spec, record, tok_fp, shard_key(record, tok_fp)


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
    _save_npy(str(out / "row_stats.npy"), train_stats)
    _save_npy(str(out / "val_row_stats.npy"), val_stats)
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
    _atomic_write(out / "index.json", json.dumps(index, indent=1))
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


def config_from_data_args(init_args: dict[str, Any]) -> PrepareConfig:
    """The PrepareConfig of an SFTDataModule's `init_args` (keys the datamodule alone uses are ignored)."""
    names = {f.name for f in fields(PrepareConfig)}
    args = {k: v for k, v in init_args.items() if k in names}
    if isinstance(args.get("filter_checks"), list):
        args["filter_checks"] = tuple(args["filter_checks"])
    return PrepareConfig(**args)

