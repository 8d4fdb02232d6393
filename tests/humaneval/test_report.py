"""Report statistics against hand-computed values on a fixed vote table (tests/humaneval/votes_table.py)."""

from __future__ import annotations

import csv
import json
from fractions import Fraction

import pytest

from north_lightning.humaneval import db
from north_lightning.humaneval.report import build_report, write_report
from north_lightning.humaneval.stats import (
    bootstrap_mean,
    bradley_terry,
    bradley_terry_bootstrap,
    krippendorff_alpha,
    left_score,
)
from humaneval.votes_table import TABLE, cast


def test_preference_maps_strong_and_weak_to_win_and_ties_to_half():
    assert [left_score(p) for p in (1, 2, 3, 4, 5)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="preference must be 1-5"):
        left_score(6)


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 coders x 12 units with missing values;
    # the paper gives alpha = 0.743 (nominal) and 0.849 (interval).
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
              [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    units = [[c[u] for c in coders if c[u] is not None] for u in range(12)]
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha([[3, 3], [3, 3]], "interval") != krippendorff_alpha([[3, 3], [3, 3]], "interval")  # nan


def test_bradley_terry_recovers_strengths_whose_expected_wins_match_exactly():
    # strengths 4:2:1; n_AB=6 (A wins 4), n_BC=3 (B wins 2), n_AC=5 (A wins 4): the score equations
    # W_i = sum_j n_ij p_i / (p_i + p_j) hold exactly at p = (4, 2, 1) / 7, so that is the MLE.
    games = [("A", "B", 1.0)] * 4 + [("A", "B", 0.0)] * 2 + [("B", "C", 1.0)] * 2 + [("B", "C", 0.0)] \
        + [("A", "C", 1.0)] * 4 + [("A", "C", 0.0)]
    fit = bradley_terry(games)
    assert fit == pytest.approx({"A": 4 / 7, "B": 2 / 7, "C": 1 / 7}, abs=1e-9)
    # two systems: P(A beats B) = p_A / (p_A + p_B) equals the observed score, ties counting half
    fit = bradley_terry([("A", "B", 1.0), ("A", "B", 0.5), ("A", "B", 0.0), ("A", "B", 1.0)])
    assert fit["A"] / (fit["A"] + fit["B"]) == pytest.approx(2.5 / 4)
    items = {i: [g] for i, g in enumerate(games)}
    est = bradley_terry_bootstrap(items, ["A", "B", "C"], n_boot=200)
    assert est["A"].low < 4 / 7 < est["A"].high and est["C"].low < 1 / 7 < est["C"].high


def test_bootstrap_interval_equals_the_binomial_quantiles():
    # 10 items with one vote each, 6 wins: replicate mean = K/10 with K ~ Binomial(10, 0.6). P(K<=2)=0.012,
    # P(K<=3)=0.055, P(K<=8)=0.954, P(K<=9)=0.994, so the 2.5% / 97.5% quantiles are 0.3 and 0.9.
    est = bootstrap_mean({i: [1.0 if i < 6 else 0.0] for i in range(10)}, n_boot=20_000)
    assert (est.value, est.low, est.high, est.n, est.items) == (0.6, pytest.approx(0.3), pytest.approx(0.9), 10, 10)
    # the same 10 votes, but as 5 items of 2 identical (correlated) votes: a wider interval, since fewer
    # independent units; a per-vote bootstrap would not see the difference
    paired = bootstrap_mean({i: [1.0, 1.0] if i < 3 else [0.0, 0.0] for i in range(5)}, n_boot=20_000)
    assert paired.value == 0.6 and paired.high - paired.low > est.high - est.low


def test_report_on_the_fixed_vote_table(tmp_path):
    conn = db.connect(tmp_path / "he.db")
    ids = cast(conn)
    report = build_report(conn, n_boot=20_000, mapping={"sys-a": "rl", "sys-b": "sft"})
    assert report["votes"] == 8 and report["items"] == report["items_voted"] == 4
    assert report["annotators"] == {"ann1": 4, "ann2": 4}
    (pair,) = report["pairs"]
    assert (pair["a"], pair["b"]) == ("rl (sys-a)", "sft (sys-b)")
    # a's scores: p1 1,1 · p2 .5,.5 · p3 1,1 · p4 0,0 -> 5/8 overall; explain 3/4; edit 2/4
    assert (pair["wins"], pair["ties"], pair["losses"]) == (4, 2, 2)
    overall = pair["win_rate_a"]
    assert overall["value"] == 5 / 8 and overall["n"] == 8 and overall["items"] == 4
    # item means 1, .5, 1, 0 (2 votes each): replicate = mean of 4 draws; P(mean<=.125)=5/256=0.0195 and
    # P(mean<=.25)=0.074, so the 2.5% quantile is .25; P(mean<1)=1-1/16=0.9375, so the 97.5% one is 1.
    assert overall["ci95"] == [pytest.approx(0.25), pytest.approx(1.0)]
    assert pair["by_category"]["explain"]["value"] == 3 / 4 and pair["by_category"]["edit"]["value"] == 1 / 2
    # interval alpha on a-side preferences (1,2) (3,3) (2,2) (5,4): D_o = 4/8, D_e = 184/56 -> 1 - 28/184
    assert report["agreement"]["krippendorff_alpha_interval"] == pytest.approx(float(1 - Fraction(28, 184)))
    assert report["agreement"]["krippendorff_alpha_nominal_outcome"] == 1.0  # same win/tie/loss on every item
    assert "bradley_terry" not in report  # two systems only
    assert report["mean_ratings"] == {"rl (sys-a)": {"mean": 27 / 8, "n": 8}, "sft (sys-b)": {"mean": 3.0, "n": 8}}
    # longer response's score: a longer on p1, p2 (1,1,.5,.5), b longer on p3, p4 (0,0,1,1) -> 5/8
    assert report["length_bias"]["longer_win_rate"]["value"] == 5 / 8
    left_scores = []
    for (prompt, name), (pref_a, _, _) in TABLE.items():
        a_left = db.layout(conn, ids[name], db.item_id_for(prompt, "sys-a", "sys-b"))[0].endswith("sys-a")
        left_scores.append(left_score(pref_a) if a_left else 1 - left_score(pref_a))
    assert report["position_bias"]["left_win_rate"]["value"] == pytest.approx(sum(left_scores) / 8)
    # passed tests but mean rating <= 2: a on p4 (1, 2) and b on p3 (2, 1); a on p1 (5, 4) is fine
    flagged = {(f["response_id"], f["task_id"], f["mean_rating"]) for f in report["passed_but_rated_low"]}
    assert flagged == {("p4-sys-a", "task-p4", 1.5), ("p3-sys-b", "task-p3", 1.5)}

    paths = write_report(conn, tmp_path / "out", report)
    assert json.loads(paths["json"].read_text())["pairs"][0]["win_rate_a"]["value"] == 5 / 8
    rows = list(csv.DictReader(open(paths["csv"])))
    lines = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert len(rows) == len(lines) == 8 and {r["annotator"] for r in rows} == {"ann1", "ann2"}
    assert all(r["outcome_left"] == {1: "win", 2: "win", 3: "tie", 4: "loss", 5: "loss"}[int(r["preference"])]
               for r in rows)
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ids_listed = [line for line in paths["flagged"].read_text().splitlines() if not line.startswith("#")]
    assert ids_listed == ["task-p3", "task-p4"]


def test_three_systems_get_bradley_terry_with_intervals(tmp_path):
    from humaneval.votes_table import RUBRICS, responses

    conn = db.connect(tmp_path / "he.db")
    assert db.load_responses(conn, responses(("sys-a", "sys-b", "sys-c")), RUBRICS) == 4 * 3  # 3 pairs per prompt
    token = db.add_annotator(conn, "ann1")
    me = db.annotator_for_token(conn, token).annotator_id
    for item_id in db.item_order(conn, me):  # a beats b beats c on p2-p4; p1 upsets every pair (no separation)
        left, right = db.layout(conn, me, item_id)
        better_left = (left < right) != (db.item(conn, item_id)["prompt_id"] == "p1")
        db.save_vote(conn, me, item_id, rating_left=3, rating_right=3, preference=1 if better_left else 5)
    report = build_report(conn, n_boot=200)
    bt = report["bradley_terry"]
    assert bt["sys-a"]["value"] > bt["sys-b"]["value"] > bt["sys-c"]["value"]
    assert all(e["ci95"][0] <= e["value"] <= e["ci95"][1] for e in bt.values())
    assert [p["win_rate_a"]["value"] for p in report["pairs"]] == [0.75, 0.75, 0.75]


def test_cli_add_annotator_and_report(tmp_path, capsys):
    from north_lightning.__main__ import main
    from humaneval.votes_table import RUBRICS, responses

    path = tmp_path / "he.db"
    db.load_responses(db.connect(path), responses(), RUBRICS)
    assert main(["humaneval", "add-annotator", "--db", str(path), "--name", "ann1"]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["humaneval", "add-annotator", "--db", str(path), "--name", "ann1"]) == 1
    assert "annotator 'ann1' already exists" in capsys.readouterr().err
    conn = db.connect(path)
    me = db.annotator_for_token(conn, token)
    assert me.name == "ann1" and not me.is_admin
    for item_id in db.item_order(conn, me.annotator_id):
        db.save_vote(conn, me.annotator_id, item_id, rating_left=4, rating_right=2, preference=2)
    (tmp_path / "mapping.json").write_text(json.dumps({"sys-a": {"name": "rl", "model": "/x"},
                                                       "sys-b": {"name": "sft", "model": "/y"}}))
    assert main(["humaneval", "report", "--db", str(path), "--out", str(tmp_path / "r"), "--bootstrap", "200",
                 "--mapping", str(tmp_path / "mapping.json")]) == 0
    out = capsys.readouterr().out
    assert "4 votes on 4/4 items by 1 annotators" in out and "rl (sys-a) vs sft (sys-b)" in out
    assert json.loads((tmp_path / "r" / "report.json").read_text())["position_bias"]["left_win_rate"]["value"] == 1.0
    assert main(["humaneval", "report", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "r")]) == 1
