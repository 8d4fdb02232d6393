"""Prepare's first stage: render, filter and tokenise an SFT mixture's records into document chunks on disk.

Records are cut into chunks of `chunk_records`, each rendered through its component's harness, checked
(`filters.py`), tokenised in one batch and masked, in `num_proc` processes; a chunk's arrays are written first
and its .json (offsets, trainable counts, validation flags, filter counts) last, so a killed prepare keeps the
finished chunks and `build_documents` skips them. `load_documents` reads the chunks back as the packer's tables.
`record_reject_reason` gives callers that vet single records (`synth`) the same rules.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from north_lightning.datamodules.filters import COMMON_CONTROL_STRINGS, FilterError, FilterReport, check_messages
from north_lightning.datamodules.mixture import MixtureSpec
from north_lightning.datamodules.packing import DocTable
from north_lightning.datamodules.prepare_config import PrepareConfig, is_validation, load_tokenizer, stable_seed
from north_lightning.datamodules.tokenize import chat_tokens, chat_tokens_batch, control_strings
from north_lightning.formats.harnesses import get_harness
from north_lightning.formats.records import BadRecordCounter, iter_records

log = logging.getLogger(__name__)

# Records fixed to the key harness may also be rendered by these (same tools, other spelling).
COMPATIBLE = {"swe_agent_xml": ("swe_agent", "swe_agent_xml"), "swe_agent": ("swe_agent", "swe_agent_xml"),
              "mini_swe_agent": ("mini_swe_agent", "mini_swe_agent_v2"),
              "mini_swe_agent_v2": ("mini_swe_agent", "mini_swe_agent_v2"),
              "terminus2": ("terminus2", "terminus2_xml"), "terminus2_xml": ("terminus2", "terminus2_xml")}

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


def _reject(cfg: PrepareConfig, report: FilterReport, component: str, record: Any, reason: str) -> None:
    """Count a dropped record, or stop the prepare when `on_reject` is 'fail'."""
    if cfg.on_reject == "fail":
        raise FilterError(f"{component}: record {record.id!r} rejected: {reason}")
    report.drop(component, reason, f"{component}/{record.id}")


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
                _reject(cfg, report, comp.name, record, reason)
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
            _reject(cfg, report, comp.name, record, reason)
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
    save_npy(f"{base}.ids.npy", np.concatenate(ids_out) if ids_out else np.zeros(0, np.int32))
    save_npy(f"{base}.mask.npy", np.concatenate(mask_out) if mask_out else np.zeros(0, np.uint8))
    meta = {"offsets": offsets, "trainable": trainable, "val": val, "record_ids": rec_ids,
            "kept": dict(report.kept), "dropped": {k: dict(v) for k, v in report.dropped.items()},
            "examples": report.examples}
    atomic_write(Path(f"{base}.json"), json.dumps(meta))
    return base

def save_npy(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def atomic_write(path: Path, text: str) -> None:
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
