"""The report of a pairwise evaluation: win rates, agreement, Bradley-Terry, ratings, biases, exports.

`build_report(conn)` reads every vote and returns a JSON-able dict; `write_report(...)` writes it with the raw
votes (CSV and JSONL), a PNG chart, and `flagged_task_ids.txt`: the tasks of responses that passed their
tests but that annotators rated 2 or lower on average (possible reward hacking), one task id per line, the
file `tasks filter --drop` reads. Systems appear under their blind ids unless a mapping (generate's
`mapping.json`) is given.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from north_lightning.humaneval import db
from north_lightning.humaneval.stats import (
    DEFAULT_BOOTSTRAP,
    bootstrap_mean,
    bradley_terry_bootstrap,
    group_by,
    krippendorff_alpha,
    left_score,
    outcome,
)

FLAG_MAX_RATING = 2.0
EXPORT_FIELDS = ["annotator", "item_id", "category", "prompt_id", "left_system", "right_system", "left_response",
                 "right_response", "rating_left", "rating_right", "preference", "outcome_left", "comment",
                 "created_at", "updated_at"]


def load_mapping(path: str | Path | None) -> dict[str, str]:
    """{blind id: display name} from generate's mapping.json ({id: {"name": ..., "model": ...}})."""
    if not path:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the system mapping: {err}") from err
    if not isinstance(raw, dict) or not all(isinstance(v, dict) and "name" in v for v in raw.values()):
        raise ValueError(f"{path}: expected {{blind id: {{'name': ..., 'model': ...}}}}")
    return {k: str(v["name"]) for k, v in raw.items()}


def _canonical(vote: dict[str, Any]) -> tuple[str, str, float, int]:
    """(system a, system b, score of a, preference seen from a) with a < b, whatever side a was shown on."""
    left, right, pref = vote["left_system"], vote["right_system"], int(vote["preference"])
    if left < right:
        return left, right, left_score(pref), pref
    return right, left, 1.0 - left_score(pref), 6 - pref


def build_report(conn: sqlite3.Connection, *, mapping: dict[str, str] | None = None,
                 n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    votes = db.all_votes(conn)
    name = (lambda s: f"{mapping[s]} ({s})" if s in mapping else s) if mapping else (lambda s: s)
    systems = sorted(r[0] for r in conn.execute("SELECT DISTINCT system FROM responses"))
    canon = [(v, *_canonical(v)) for v in votes]
    report: dict[str, Any] = {
        "votes": len(votes), "items": db.count_items(conn),
        "items_voted": len({v["item_id"] for v in votes}),
        "annotators": dict(sorted(_count(v["annotator"] for v in votes).items())),
        "systems": {s: name(s) for s in systems},
        "preference_mapping": {str(k): f"{label} -> left {outcome(k)}" for k, label in db.PREFERENCE_LABELS.items()},
    }

    pairs = []
    for a, b in sorted({(c[1], c[2]) for c in canon}):
        rows = [(v, score) for v, x, y, score, _ in canon if (x, y) == (a, b)]
        entry: dict[str, Any] = {"a": name(a), "b": name(b), "system_a": a, "system_b": b,
                                 "wins": sum(s == 1.0 for _, s in rows), "ties": sum(s == 0.5 for _, s in rows),
                                 "losses": sum(s == 0.0 for _, s in rows)}
        entry["win_rate_a"] = _win_rate(rows, n_boot, seed).to_dict()
        entry["by_category"] = {cat: _win_rate([r for r in rows if r[0]["category"] == cat], n_boot, seed).to_dict()
                                for cat in sorted({v["category"] for v, _ in rows})}
        pairs.append(entry)
    report["pairs"] = pairs

    units = group_by(canon, key=lambda c: c[0]["item_id"], value=lambda c: c[4])
    report["agreement"] = {
        "krippendorff_alpha_interval": krippendorff_alpha(units.values(), "interval"),
        "krippendorff_alpha_nominal_outcome": krippendorff_alpha(
            ([left_score(p) for p in vals] for vals in units.values()), "nominal"),
        "items_with_2plus_votes": sum(len(v) >= 2 for v in units.values()),
    }

    if len(systems) > 2 and votes:
        comparisons = group_by(canon, key=lambda c: c[0]["item_id"], value=lambda c: c[1:4])
        bt = bradley_terry_bootstrap(comparisons, systems, n_boot=max(50, n_boot // 4), seed=seed)
        report["bradley_terry"] = {name(s): est.to_dict() for s, est in bt.items()}

    ratings: dict[str, list[float]] = defaultdict(list)
    per_response: dict[str, list[int]] = defaultdict(list)
    for v in votes:
        ratings[v["left_system"]].append(v["rating_left"])
        ratings[v["right_system"]].append(v["rating_right"])
        per_response[v["left_response"]].append(v["rating_left"])
        per_response[v["right_response"]].append(v["rating_right"])
    report["mean_ratings"] = {name(s): {"mean": sum(r) / len(r), "n": len(r)} for s, r in sorted(ratings.items())}

    left = bootstrap_mean(group_by(votes, key=lambda v: v["item_id"], value=lambda v: left_score(v["preference"])),
                          n_boot=n_boot, seed=seed)
    report["position_bias"] = {"left_win_rate": left.to_dict(), "right_win_rate": 1.0 - left.value}
    report["length_bias"] = {"longer_win_rate": bootstrap_mean(
        group_by(votes, key=lambda v: v["item_id"], value=_longer_score), n_boot=n_boot, seed=seed).to_dict()}

    flagged = []
    for row in conn.execute("SELECT response_id, system, task_id, prompt_id FROM responses WHERE passed = 1 "
                            "ORDER BY response_id"):
        given = per_response.get(row["response_id"])
        if given and sum(given) / len(given) <= FLAG_MAX_RATING:
            flagged.append({"response_id": row["response_id"], "system": name(row["system"]),
                            "task_id": row["task_id"], "prompt_id": row["prompt_id"],
                            "mean_rating": sum(given) / len(given), "ratings": given})
    report["passed_but_rated_low"] = flagged
    return _json_safe(report)


def _json_safe(value: Any) -> Any:
    """NaN (an undefined statistic: no votes, one annotator) becomes null, so the report is valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for v in values:
        out[v] += 1
    return dict(out)


def _win_rate(rows: list[tuple[dict[str, Any], float]], n_boot: int, seed: int) -> Any:
    return bootstrap_mean(group_by(rows, key=lambda r: r[0]["item_id"], value=lambda r: r[1]), n_boot=n_boot, seed=seed)


def _longer_score(vote: dict[str, Any]) -> float | None:
    """Score of the longer response of the pair; None when both are as long."""
    if vote["left_length"] == vote["right_length"]:
        return None
    score = left_score(vote["preference"])
    return score if vote["left_length"] > vote["right_length"] else 1.0 - score


def export_rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [{**{k: v.get(k) for k in EXPORT_FIELDS}, "outcome_left": outcome(v["preference"])}
            for v in db.all_votes(conn)]


def flagged_task_ids(report: dict[str, Any]) -> list[str]:
    return sorted({f["task_id"] for f in report["passed_but_rated_low"] if f["task_id"]})


def write_report(conn: sqlite3.Connection, out_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """report.json, votes.csv, votes.jsonl, chart.png and flagged_task_ids.txt under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f for k, f in (("json", "report.json"), ("csv", "votes.csv"), ("jsonl", "votes.jsonl"),
                                     ("chart", "chart.png"), ("flagged", "flagged_task_ids.txt"))}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    rows = export_rows(conn)
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = flagged_task_ids(report)
    paths["flagged"].write_text("# tasks whose response passed its tests but was rated <= 2 "
                                "(`tasks filter REPORT --drop` this file)\n" + "".join(f"{t}\n" for t in ids))
    write_chart(report, paths["chart"])
    return paths


def write_chart(report: dict[str, Any], path: str | Path) -> None:
    """Win rate per category (with 95% intervals) for each pair, and mean ratings per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(1, len(report["pairs"]))
    for p, pair in enumerate(report["pairs"]):
        cells = {**pair["by_category"], "overall": pair["win_rate_a"]}
        xs = [i + p * width for i in range(len(cells))]
        values = [c["value"] for c in cells.values()]
        errs = [[c["value"] - c["ci95"][0] for c in cells.values()], [c["ci95"][1] - c["value"] for c in cells.values()]]
        ax1.bar(xs, values, width, yerr=errs, capsize=3, label=f"{pair['a']} vs {pair['b']}")
        ax1.set_xticks([i + width * (len(report["pairs"]) - 1) / 2 for i in range(len(cells))], list(cells))
    ax1.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("win rate of a (ties half)")
    ax1.set_title(f"pairwise win rate, 95% item bootstrap ({report['votes']} votes)")
    if report["pairs"]:
        ax1.legend(fontsize=8)
    names = list(report["mean_ratings"])
    ax2.bar(range(len(names)), [report["mean_ratings"][n]["mean"] for n in names], color="tab:green")
    ax2.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax2.set_ylim(0, 5)
    ax2.set_title("mean rating (1-5)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_summary(report: dict[str, Any]) -> str:
    def est(e: dict[str, Any]) -> str:
        return f"{_f(e['value'])} [{_f(e['ci95'][0])}, {_f(e['ci95'][1])}]"

    lines = [f"{report['votes']} votes on {report['items_voted']}/{report['items']} items by "
             f"{len(report['annotators'])} annotators"]
    for pair in report["pairs"]:
        lines.append(f"{pair['a']} vs {pair['b']}: win rate of {pair['a']} {est(pair['win_rate_a'])} "
                     f"(W/T/L {pair['wins']}/{pair['ties']}/{pair['losses']})")
        for cat, c in pair["by_category"].items():
            lines.append(f"  {cat:<12} {est(c)} n={c['n']}")
    agreement = report["agreement"]
    lines.append(f"agreement: Krippendorff alpha (interval, 5-point) {_f(agreement['krippendorff_alpha_interval'])}, "
                 f"(nominal, win/tie/loss) {_f(agreement['krippendorff_alpha_nominal_outcome'])} on "
                 f"{agreement['items_with_2plus_votes']} items with 2+ votes")
    for sys_name, e in report.get("bradley_terry", {}).items():
        lines.append(f"Bradley-Terry {sys_name}: {est(e)}")
    for sys_name, r in report["mean_ratings"].items():
        lines.append(f"mean rating {sys_name}: {r['mean']:.2f} (n={r['n']})")
    lines.append(f"position bias: left win rate {est(report['position_bias']['left_win_rate'])}; "
                 f"length bias: longer win rate {est(report['length_bias']['longer_win_rate'])}")
    lines.append(f"passed tests but rated <= 2: {len(report['passed_but_rated_low'])} responses")
    return "\n".join(lines)
