"""The prepare config and its content key: what decides an SFT stage's packed rows, hashed into the shards' name.

`key` is the sha256 of the format version, every setting that changes the rows, the tokenizer (its files and chat
template) and the content of every input file (`prepare.py` explains the layout the key names): an unchanged config
finds its shards and reuses them, any change makes new ones. Input hashes are cached by (path, size, mtime) so a
rank that checks its shards only stats the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from north_lightning.assets import tiny_tokenizer_path
from north_lightning.datamodules.filters import FilterConfig
from north_lightning.datamodules.mixture import MixtureSpec

FORMAT_VERSION = 1


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


def expected_key(cfg: PrepareConfig) -> tuple[MixtureSpec, dict[str, Any], str, str]:
    """(spec, config record, tokenizer fingerprint, key) without touching the shards."""
    spec = cfg.spec()
    hashes = FileHashes(cfg.out_dir)
    record = config_record(cfg, spec, hashes)
    hashes.save()
    tok_fp = tokenizer_fingerprint(cfg)
    return spec, record, tok_fp, shard_key(record, tok_fp)


def config_from_data_args(init_args: dict[str, Any]) -> PrepareConfig:
    """The PrepareConfig of an SFTDataModule's `init_args` (keys the datamodule alone uses are ignored)."""
    names = {f.name for f in fields(PrepareConfig)}
    args = {k: v for k, v in init_args.items() if k in names}
    if isinstance(args.get("filter_checks"), list):
        args["filter_checks"] = tuple(args["filter_checks"])
    return PrepareConfig(**args)

