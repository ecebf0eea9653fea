"""Krippendorff's alpha (against the `krippendorff` package and by hand), the summary statistics, the export."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from ophora.review.agreement import alpha_interval, alpha_ordinal
from ophora.review.summary import describe, summarize, t95

nan = np.nan
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: 4 coders, 12 units, values 1-5
KRIPPENDORFF_2011 = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
    [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
])


def test_alpha_matches_the_krippendorff_package():
    krippendorff = pytest.importorskip("krippendorff", reason="pip install krippendorff (in the test extras)")
    rng = np.random.default_rng(3)
    cases = [KRIPPENDORFF_2011]
    for raters, units, missing in ((2, 10, 0.0), (3, 40, 0.2), (5, 60, 0.5), (8, 25, 0.3)):
        truth = rng.integers(1, 6, units)
        data = np.clip(truth[None] + rng.integers(-1, 2, (raters, units)), 1, 5).astype(float)
        data[rng.random(data.shape) < missing] = nan
        cases.append(data)
    for data in cases:
        expected = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5])
        assert alpha_ordinal(data) == pytest.approx(expected, abs=1e-12)


def test_alpha_hand_checked():
    # the published value of the 2011 example (ordinal): 0.815
    assert round(alpha_ordinal(KRIPPENDORFF_2011), 3) == 0.815
    # two raters, three videos: (1,1) (2,2) (1,2). Coincidences o11 = o22 = 2, o12 = o21 = 1, so n1 = n2 = 3, n = 6;
    # ordinal delta^2(1,2) = (n1 + n2 - (n1 + n2)/2)^2 = 9; D_o = 2 * 1 * 9 = 18, D_e = 2 * 3 * 3 * 9 = 162;
    # alpha = 1 - (n - 1) D_o / D_e = 1 - 5 * 18 / 162 = 4/9
    assert alpha_ordinal(np.array([[1, 2, 1], [1, 2, 2]])) == pytest.approx(4 / 9)
    assert alpha_ordinal(np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])) == pytest.approx(1.0)
    assert math.isnan(alpha_ordinal(np.array([[3, 3], [3, 3]])))  # no variation: undefined
    assert math.isnan(alpha_ordinal(np.array([[1, nan], [nan, 2]])))  # nothing pairable


def test_alpha_bootstrap_interval():
    low, high = alpha_interval(KRIPPENDORFF_2011, resamples=2000, seed=1)
    assert low < alpha_ordinal(KRIPPENDORFF_2011) <= high <= 1.0
    assert (low, high) == alpha_interval(KRIPPENDORFF_2011, resamples=2000, seed=1)  # seeded


def test_describe_and_t_quantile():
    d = describe([1, 2, 3, 4, 5])
    assert d["mean"] == 3 and d["sd"] == pytest.approx(math.sqrt(2.5))
    assert d["ci_low"] == pytest.approx(3 - 2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert t95(1000) == pytest.approx(1.9623, abs=1e-3) and t95(40) == pytest.approx(2.0211, abs=1e-3)
    assert describe([])["mean"] is None and describe([4])["sd"] is None


def test_summary_groups():
    rows = []
    for rater, shift in (("a", 0), ("b", 1)):
        for v, (source, phase, score) in enumerate((("generated", "x", 2), ("generated", "y", 3), ("real", "x", 4))):
            rows.append({"rater": rater, "video": f"v{v}", "source": source, "phase": phase, "criterion": "q",
                         "score": min(5, score + shift)})
    s = summarize(rows, [("q", "Quality")], resamples=200)
    by = {(r["criterion"], r["source"]): r for r in s["by_criterion"]}
    assert by["q", "generated"]["mean"] == pytest.approx((2 + 3 + 3 + 4) / 4)
    assert by["q", "real"]["mean"] == pytest.approx(4.5) and by["q", "all"]["n"] == 6
    assert {r["rater"]: r["mean"] for r in s["by_rater"]} == {"a": 3.0, "b": 4.0}
    phase = {(r["phase"], r["source"]): r["n"] for r in s["by_phase"]}
    assert phase["x", "generated"] == 2 and phase["x", "real"] == 2 and phase["y", "all"] == 2
    expected = alpha_ordinal(np.array([[2, 3, 4], [3, 4, 5]]))
    assert s["agreement"][0]["alpha"] == pytest.approx(expected) and s["agreement"][0]["units"] == 3


def test_export_writes_answers_and_summary(tmp_path):
    from review_helpers import make_real, make_samples

    from ophora.review import answers
    from ophora.review.config import AddRaterConfig, CreateConfig, ExportConfig
    from ophora.review.export import export
    from ophora.review.study import add_rater, connect, create_study

    folder = tmp_path / "study"
    create_study(CreateConfig(study=folder, generated=make_samples(tmp_path / "g", per_phase=1),
                              real=make_real(tmp_path / "r", 1), seed=1))
    clicked = {}
    db = connect(folder / "study.sqlite")
    for k, name in enumerate(("ann", "ben", "cat")):
        token = add_rater(AddRaterConfig(study=folder, name=name)).token
        rater = answers.authenticate(db, token, "rater")
        state = answers.state(db, rater)
        for i, item in enumerate(state["items"]):
            for j, c in enumerate(state["criteria"]):
                score = 1 + (i + j + k) % 5
                answers.record_score(db, rater, f"req-{name}-{i}-{j}-xxxxxxxx", item["video"], c["key"], score)
                clicked[name, item["video"], c["key"]] = score
        answers.record_comment(db, rater, f"req-{name}-comment-xxxxxxx", state["items"][0]["video"], f"note, \"{name}\"")
    db.close()
    line = export(ExportConfig(study=folder, out=tmp_path / "out", bootstrap=100))
    assert "84 answers" in line
    rows = list(csv.DictReader(open(tmp_path / "out" / "answers.csv")))
    assert {(r["rater"], r["video"], r["criterion"]): int(r["score"]) for r in rows} == clicked
    assert {r["source"] for r in rows} == {"generated", "real"}
    comments = list(csv.DictReader(open(tmp_path / "out" / "comments.csv")))
    assert sorted(c["comment"] for c in comments) == ['note, "ann"', 'note, "ben"', 'note, "cat"']
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["agreement"]) == 8 and summary["videos"] == 4
    for name in ("summary.html", "criteria.png", "agreement.png", "summary_criteria.csv", "summary_phases.csv",
                 "summary_raters.csv", "agreement.csv", "events.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 100, name
    assert (tmp_path / "out" / "criteria.png").read_bytes()[:4] == b"\x89PNG"
