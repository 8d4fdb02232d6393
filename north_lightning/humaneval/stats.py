"""Statistics of pairwise votes: win rates with item-bootstrap intervals, Krippendorff's alpha, Bradley-Terry.

The 5-point preference maps to a score for the left response: 1 "left much better" and 2 "left better" are
both a win (1.0), 3 a tie (0.5), 4 and 5 a loss (0.0); strong and weak preference count the same. A win
rate is the mean score, so ties count half.

Votes on one item are correlated (same prompt, same two responses), so intervals come from a bootstrap over
items: each replicate draws items with replacement and pools all votes of the drawn items.

Krippendorff's alpha follows Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011): coincidence
matrix over pairable values, alpha = 1 - D_o / D_e, with the nominal and interval difference functions.
Bradley-Terry strengths are fitted by Hunter's MM algorithm (Ann. Statist. 2004), a tie counting as half a
win for each side.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

PREFERENCE_SCORE = {1: 1.0, 2: 1.0, 3: 0.5, 4: 0.0, 5: 0.0}  # score of the LEFT response
DEFAULT_BOOTSTRAP = 2000


def left_score(preference: int) -> float:
    """Win (1), tie (0.5) or loss (0) of the left response for a 5-point preference."""
    try:
        return PREFERENCE_SCORE[int(preference)]
    except (KeyError, ValueError):
        raise ValueError(f"preference must be 1-5, got {preference!r}") from None


def outcome(preference: int) -> str:
    """'win' / 'tie' / 'loss' of the left response."""
    return {1.0: "win", 0.5: "tie", 0.0: "loss"}[left_score(preference)]


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int  # votes (observations) behind the estimate
    items: int  # bootstrap units

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.low, self.high], "n": self.n, "items": self.items}


def bootstrap_mean(groups: dict[Hashable, Sequence[float]], *, n_boot: int = DEFAULT_BOOTSTRAP,
                   seed: int = 0) -> Estimate:
    """Mean of all values with a 95% percentile interval from resampling the groups (items) with
    replacement and pooling their values (a ratio estimator: items with more votes weigh more)."""
    keys = [k for k in groups if len(groups[k])]
    if not keys:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0)
    sums = np.array([float(np.sum(groups[k])) for k in keys])
    counts = np.array([len(groups[k]) for k in keys], dtype=float)
    value = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    replicates = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.quantile(replicates, [0.025, 0.975])
    return Estimate(value, float(low), float(high), int(counts.sum()), len(keys))


# ---- agreement ----------------------------------------------------------------------------------------------
def krippendorff_alpha(units: Iterable[Sequence[Any]], metric: str = "nominal") -> float:
    """Krippendorff's alpha over units (each the values its coders gave; missing values left out).
    Units with fewer than two values are not pairable and do not count. `metric`: nominal | interval."""
    if metric not in ("nominal", "interval"):
        raise ValueError(f"metric must be 'nominal' or 'interval', got {metric!r}")

    def delta2(c: Any, k: Any) -> float:
        return float(c != k) if metric == "nominal" else (float(c) - float(k)) ** 2

    coincidences: dict[tuple[Any, Any], float] = defaultdict(float)
    for values in units:
        values = list(values)
        m = len(values)
        if m < 2:
            continue
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    coincidences[(c, k)] += 1.0 / (m - 1)
    totals: dict[Any, float] = defaultdict(float)
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    if n < 2:
        return float("nan")
    observed = sum(w * delta2(c, k) for (c, k), w in coincidences.items()) / n
    expected = sum(totals[c] * totals[k] * delta2(c, k) for c in totals for k in totals) / (n * (n - 1))
    if expected == 0:
        return float("nan")  # every value identical: agreement is undefined, not perfect
    return 1.0 - observed / expected


# ---- Bradley-Terry ------------------------------------------------------------------------------------------
def bradley_terry(comparisons: Iterable[tuple[str, str, float]], systems: Sequence[str] | None = None, *,
                  iterations: int = 10_000, tol: float = 1e-12) -> dict[str, float]:
    """Strengths p (summing to 1) maximising the Bradley-Terry likelihood P(i beats j) = p_i / (p_i + p_j).
    `comparisons` are (i, j, score of i) with score 1 / 0.5 / 0. A system that never scored gets 0."""
    comparisons = list(comparisons)
    names = list(systems) if systems is not None else sorted({s for c in comparisons for s in c[:2]})
    index = {name: i for i, name in enumerate(names)}
    wins = np.zeros(len(names))
    games = np.zeros((len(names), len(names)))
    for i, j, score in comparisons:
        a, b = index[i], index[j]
        wins[a] += score
        wins[b] += 1.0 - score
        games[a, b] += 1
        games[b, a] += 1
    p = np.full(len(names), 1.0 / len(names))
    for _ in range(iterations):
        denom = (games / (p[:, None] + p[None, :] + 1e-300)).sum(axis=1)
        new = np.where(denom > 0, wins / np.where(denom > 0, denom, 1.0), 0.0)
        new = new / new.sum() if new.sum() > 0 else p
        if np.max(np.abs(new - p)) < tol:
            p = new
            break
        p = new
    return {name: float(p[index[name]]) for name in names}


def bradley_terry_bootstrap(items: dict[Hashable, list[tuple[str, str, float]]], systems: Sequence[str], *,
                            n_boot: int = 500, seed: int = 0) -> dict[str, Estimate]:
    """Bradley-Terry strengths with 95% intervals from resampling items."""
    point = bradley_terry([c for cs in items.values() for c in cs], systems)
    keys = list(items)
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, len(systems)))
    for b in range(n_boot):
        drawn = [c for k in rng.integers(0, len(keys), size=len(keys)) for c in items[keys[k]]]
        fit = bradley_terry(drawn, systems, iterations=2000, tol=1e-9)
        reps[b] = [fit[s] for s in systems]
    n = sum(len(cs) for cs in items.values())
    out = {}
    for i, s in enumerate(systems):
        low, high = np.quantile(reps[:, i], [0.025, 0.975])
        out[s] = Estimate(point[s], float(low), float(high), n, len(keys))
    return out


def group_by(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Hashable],
             value: Callable[[dict[str, Any]], float | None]) -> dict[Hashable, list[float]]:
    """{key(row): [value(row), ...]} leaving out rows whose value is None."""
    out: dict[Hashable, list[float]] = defaultdict(list)
    for row in rows:
        v = value(row)
        if v is not None:
            out[key(row)].append(v)
    return dict(out)
