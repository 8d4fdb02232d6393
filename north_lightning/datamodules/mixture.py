"""Mixtures weighted by *trainable* tokens: a YAML spec (component → target share) and a sampler that hits it.

Why trainable tokens: the recipe's shares ("SWE-agent ~50% of stage 2") are shares of what the loss sees.
An agentic document carries a long prompt and long observations that are not trained on, so weighting by
documents or by raw tokens would silently under-train the chatty single-turn sources or over-train agents.

A component is one source rendered through one harness (the same oracle trajectories may feed several
components, one per harness). Spec YAML::

    name: tiny_stage2
    components:
      - name: toy_swe_agent                  # unique; shows up in reports
        paths: [asset://sft_data/toy_terminal_train.jsonl]   # JSONL/Parquet, globs allowed; asset:// =
        harness: swe_agent                   #   package assets; relative paths: the YAML's folder, then cwd
        share: 0.50                          # target share of trainable tokens (shares are normalised)
        source: toy_terminal                 # optional: keep only records whose `source` matches
        verified_only: true                  # optional: keep only verified records
        harness_args: {workdir: /app}        # optional: harness constructor arguments (as at rollout time)
"""

from __future__ import annotations

import glob
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from north_lightning.assets import ASSETS_DIR
from north_lightning.formats.harnesses import HARNESSES


@dataclass(frozen=True)
class Component:
    name: str
    paths: tuple[str, ...]
    harness: str
    share: float
    source: str | None = None
    verified_only: bool = False
    harness_args: tuple[tuple[str, Any], ...] = ()  # constructor kwargs, e.g. workdir (kept hashable)


@dataclass(frozen=True)
class MixtureSpec:
    name: str
    components: tuple[Component, ...]
    origin: str = "<dict>"

    @property
    def shares(self) -> list[float]:
        total = sum(c.share for c in self.components)
        return [c.share / total for c in self.components]

    @staticmethod
    def load(spec: str | Path | dict[str, Any]) -> MixtureSpec:
        """From a YAML path or an already-parsed dict; errors name the file and the offending key."""
        if isinstance(spec, dict):
            return MixtureSpec.from_dict(spec, "<dict>", Path.cwd())
        path = resolve_path(str(spec), Path.cwd())
        if not path.exists():
            raise FileNotFoundError(f"mixture spec not found: {spec}")
        try:
            with path.open() as fh:  # a stream, so PyYAML's message names the file
                data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a mixture spec must be a YAML mapping")
        return MixtureSpec.from_dict(data, str(path), path.parent)

    @staticmethod
    def from_dict(d: dict[str, Any], origin: str, base: Path) -> MixtureSpec:
        raw = d.get("components")
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{origin}: 'components' must be a non-empty list")
        comps, seen = [], set()
        for i, c in enumerate(raw):
            where = f"{origin}: components[{i}]"
            if not isinstance(c, dict):
                raise ValueError(f"{where} must be a mapping")
            for key in ("name", "paths", "harness", "share"):
                if key not in c:
                    raise ValueError(f"{where} is missing key {key!r}")
            unknown = set(c) - {"name", "paths", "harness", "share", "source", "verified_only", "harness_args"}
            if unknown:
                raise ValueError(f"{where} has unknown keys {sorted(unknown)}")
            if c["name"] in seen:
                raise ValueError(f"{where}: duplicate component name {c['name']!r}")
            seen.add(c["name"])
            if c["harness"] not in HARNESSES:
                raise ValueError(f"{where}: unknown harness {c['harness']!r}; known: {', '.join(sorted(HARNESSES))}")
            share = c["share"]
            if isinstance(share, bool) or not isinstance(share, (int, float)) or share <= 0:
                raise ValueError(f"{where}: 'share' must be a positive number, got {share!r}")
            paths = [c["paths"]] if isinstance(c["paths"], str) else list(c["paths"] or [])
            if not paths:
                raise ValueError(f"{where}: 'paths' is empty")
            resolved = tuple(q for p in paths for q in expand(str(resolve_path(p, base))))
            harness_args = c.get("harness_args") or {}
            if not isinstance(harness_args, dict):
                raise ValueError(f"{where}: 'harness_args' must be a mapping")
            comps.append(Component(c["name"], resolved, c["harness"], float(share), c.get("source"),
                                   bool(c.get("verified_only", False)), tuple(sorted(harness_args.items()))))
        return MixtureSpec(str(d.get("name") or Path(origin).stem), tuple(comps), origin)


def resolve_path(path: str, base: Path) -> Path:
    """`asset://x` → package assets; relative paths: the spec's folder if the file is there, else cwd."""
    if path.startswith("asset://"):
        return ASSETS_DIR / path[len("asset://") :]
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return base / p if (base / p).exists() else Path.cwd() / p


def expand(path: str) -> list[str]:
    """Shell-style globs (`data/sft/swe/*.parquet`) in sorted order; a pattern matching nothing is kept as
    is, so reading it fails with the pattern in the message."""
    if not any(ch in path for ch in "*?["):
        return [path]
    return sorted(glob.glob(path)) or [path]


@dataclass
class MixtureSampler:
    """Deterministic interleaving of components so that trainable tokens follow the target shares.

    Each step takes the component furthest behind its share (smallest `tokens_c / share_c`, a weighted
    round robin in token time) and its next document in a seeded per-pass permutation; small components
    are cycled (upsampled), large ones subsampled. After N tokens each share is off by at most one
    document's tokens / N, so an epoch-sized sample lands well inside ±1 percentage point.
    """

    trainable: list[list[int]]  # per component, trainable tokens of each document
    shares: list[float]
    seed: int = 0
    tokens: list[int] = field(init=False)
    _cursor: list[int] = field(init=False)
    _order: dict[tuple[int, int], list[int]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.trainable) != len(self.shares):
            raise ValueError("one share per component")
        for c, docs in enumerate(self.trainable):
            if not docs:
                raise ValueError(f"mixture component {c} has no documents left after filtering")
        self.tokens = [0] * len(self.shares)
        self._cursor = [0] * len(self.shares)

    def _permutation(self, c: int, epoch: int) -> list[int]:
        key = (c, epoch)
        if key not in self._order:
            order = list(range(len(self.trainable[c])))
            random.Random(f"{self.seed}:{c}:{epoch}").shuffle(order)
            self._order = {k: v for k, v in self._order.items() if k[0] != c}  # keep one pass per component
            self._order[key] = order
        return self._order[key]

    def next(self) -> tuple[int, int]:
        """(component, document index) of the next document."""
        c = min(range(len(self.shares)), key=lambda i: (self.tokens[i] / self.shares[i], i))
        n = len(self.trainable[c])
        epoch, pos = divmod(self._cursor[c], n)
        doc = self._permutation(c, epoch)[pos]
        self._cursor[c] += 1
        self.tokens[c] += self.trainable[c][doc]
        return c, doc

    def achieved_shares(self) -> list[float]:
        total = sum(self.tokens) or 1
        return [t / total for t in self.tokens]
