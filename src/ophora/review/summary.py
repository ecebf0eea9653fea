"""The study's statistics: mean, standard deviation and 95% interval per criterion (generated vs real, per
phase, per rater), Krippendorff's alpha with its bootstrap interval, as CSV, JSON, PNG plots and one HTML page.

The interval of a mean is Student's t over the individual ratings; ratings by one rater are not independent,
so read it as a description, and use the per-rater table to see how much raters differ.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from ophora.core.files import write_bytes, write_csv, write_json, write_text
from ophora.review.agreement import alpha_interval, alpha_ordinal
from ophora.review.criteria import SCALE

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """The 97.5% quantile of Student's t (a table to 30 degrees of freedom, then a Cornish-Fisher expansion)."""
    if df <= 30:
        return _T95[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def describe(scores: list[int]) -> dict:
    """n, mean, sd (n - 1) and the 95% t interval of the mean (None where n is too small)."""
    n = len(scores)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = sum(scores) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def summarize(rows: list[dict], criteria: list[tuple[str, str]], resamples: int = 1000, seed: int = 0) -> dict:
    """Statistics of answer rows (rater, video, source, phase, criterion, score); `criteria` is (key, label)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for r in rows:
        for source in (r["source"], "all"):
            groups["criterion", r["criterion"], source].append(r["score"])
            groups["phase", r["criterion"], r["phase"] or "(none)", source].append(r["score"])
        groups["rater", r["criterion"], r["rater"]].append(r["score"])
    sources = ["all"] + sorted({r["source"] for r in rows})
    phases = sorted({r["phase"] or "(none)" for r in rows})
    raters = sorted({r["rater"] for r in rows})
    by_criterion = [{"criterion": key, "label": label, "source": s, **describe(groups["criterion", key, s])}
                    for key, label in criteria for s in sources]
    by_phase = [{"criterion": key, "phase": p, "source": s, **describe(groups["phase", key, p, s])}
                for key, _ in criteria for p in phases for s in sources if groups.get(("phase", key, p, s))]
    by_rater = [{"criterion": key, "rater": name, **describe(groups["rater", key, name])}
                for key, _ in criteria for name in raters if groups.get(("rater", key, name))]
    agreement = []
    units = sorted({r["video"] for r in rows})
    for key, label in [*criteria, ("all", "All criteria (video x criterion units)")]:
        chosen = [r for r in rows if key == "all" or r["criterion"] == key]
        columns = sorted({(r["video"], r["criterion"] if key == "all" else "") for r in chosen})
        column = {u: i for i, u in enumerate(columns)}
        data = np.full((len(raters), len(columns)), np.nan)
        for r in chosen:
            data[raters.index(r["rater"]), column[r["video"], r["criterion"] if key == "all" else ""]] = r["score"]
        categories = tuple(range(SCALE[0], SCALE[1] + 1))
        alpha = alpha_ordinal(data, categories) if columns else float("nan")
        low, high = alpha_interval(data, categories, resamples, seed) if columns else (float("nan"),) * 2
        pairable = int((np.isfinite(data).sum(axis=0) >= 2).sum()) if columns else 0
        agreement.append({"criterion": key, "label": label, "alpha": _finite(alpha), "ci_low": _finite(low),
                          "ci_high": _finite(high), "units": pairable, "raters": len(raters)})
    return {"answers": len(rows), "videos": len(units), "raters": raters, "sources": sources, "criteria": criteria,
            "by_criterion": by_criterion, "by_phase": by_phase, "by_rater": by_rater, "agreement": agreement,
            "bootstrap": {"resamples": resamples, "seed": seed, "unit": "video"}}


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------- files


def write_summary(summary: dict, out: Path) -> list[Path]:
    """summary.json, the four CSV tables, two PNG plots and summary.html in `out`."""
    stats = ["n", "mean", "sd", "ci_low", "ci_high"]
    paths = [write_json(out / "summary.json", summary),
             write_csv(out / "summary_criteria.csv", ["criterion", "label", "source", *stats], summary["by_criterion"]),
             write_csv(out / "summary_phases.csv", ["criterion", "phase", "source", *stats], summary["by_phase"]),
             write_csv(out / "summary_raters.csv", ["criterion", "rater", *stats], summary["by_rater"]),
             write_csv(out / "agreement.csv", ["criterion", "label", "alpha", "ci_low", "ci_high", "units", "raters"],
                       summary["agreement"])]
    labels = dict(summary["criteria"])
    series = [s for s in summary["sources"] if s != "all"] or ["all"]
    bars = [(labels[key], [(s, next(r for r in summary["by_criterion"] if r["criterion"] == key and r["source"] == s))
                           for s in series]) for key in labels]
    paths.append(write_bytes(out / "criteria.png", _png(_bar_chart(
        "Mean rating per criterion (95% interval)", bars, (SCALE[0], SCALE[1]), "mean"))))
    agreement = [(a["label"], [("alpha", {"mean": a["alpha"], "ci_low": a["ci_low"], "ci_high": a["ci_high"]})])
                 for a in summary["agreement"]]
    paths.append(write_bytes(out / "agreement.png", _png(_bar_chart(
        "Krippendorff's alpha, ordinal (95% bootstrap interval)", agreement, (-0.2, 1.0), "alpha"))))
    paths.append(write_text(out / "summary.html", _html(summary)))
    return paths


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return data.tobytes()


COLORS = {"generated": (31, 111, 235), "real": (26, 127, 55), "all": (90, 100, 115), "alpha": (179, 89, 0)}


def _bar_chart(title: str, groups: list[tuple[str, list[tuple[str, dict]]]], limits: tuple[float, float],
               what: str) -> np.ndarray:
    """Horizontal bars with interval whiskers: one row per group, one bar per series (an RGB image)."""
    font, row_h, bar_h, left, width = cv2.FONT_HERSHEY_SIMPLEX, 54, 16, 420, 1300
    series = sorted({s for _, items in groups for s, _ in items})
    height = 110 + row_h * len(groups) + 50
    img = np.full((height, width, 3), 255, np.uint8)
    x0, x1 = left, width - 60
    lo, hi = limits

    def x_of(v: float) -> int:
        return int(round(x0 + (min(max(v, lo), hi) - lo) / (hi - lo) * (x1 - x0)))

    cv2.putText(img, title, (20, 36), font, 0.8, (28, 36, 48), 2, cv2.LINE_AA)
    for i, s in enumerate(series):  # legend
        cv2.rectangle(img, (20 + 190 * i, 52), (38 + 190 * i, 68), COLORS.get(s, (120, 120, 120)), -1)
        cv2.putText(img, s, (46 + 190 * i, 67), font, 0.55, (28, 36, 48), 1, cv2.LINE_AA)
    top = 90
    ticks = np.linspace(lo, hi, 7) if what == "alpha" else np.arange(lo, hi + 1)
    for t in ticks:
        cv2.line(img, (x_of(t), top), (x_of(t), top + row_h * len(groups)), (225, 229, 235), 1)
        cv2.putText(img, f"{t:g}", (x_of(t) - 12, top + row_h * len(groups) + 24), font, 0.5, (91, 102, 117), 1, cv2.LINE_AA)
    for g, (label, items) in enumerate(groups):
        y = top + g * row_h
        cv2.putText(img, label[:34], (20, y + row_h // 2 + 6), font, 0.58, (28, 36, 48), 1, cv2.LINE_AA)
        for j, (s, stats) in enumerate(items):
            yb = y + 8 + j * (bar_h + 4) if len(items) > 1 else y + (row_h - bar_h) // 2
            color = COLORS.get(s, (120, 120, 120))
            if stats.get("mean") is None:
                cv2.putText(img, "no data", (x0 + 6, yb + bar_h - 3), font, 0.45, (150, 150, 150), 1, cv2.LINE_AA)
                continue
            base = x_of(max(lo, 0.0)) if what == "alpha" else x0
            cv2.rectangle(img, (min(base, x_of(stats["mean"])), yb), (max(base, x_of(stats["mean"])), yb + bar_h), color, -1)
            if stats.get("ci_low") is not None and stats.get("ci_high") is not None:
                yc = yb + bar_h // 2
                cv2.line(img, (x_of(stats["ci_low"]), yc), (x_of(stats["ci_high"]), yc), (28, 36, 48), 2, cv2.LINE_AA)
                for xv in (x_of(stats["ci_low"]), x_of(stats["ci_high"])):
                    cv2.line(img, (xv, yc - 5), (xv, yc + 5), (28, 36, 48), 2, cv2.LINE_AA)
            cv2.putText(img, f"{stats['mean']:.2f}", (x1 + 6 if what != "alpha" else x1 + 6, yb + bar_h - 3), font, 0.42,
                        (28, 36, 48), 1, cv2.LINE_AA)
    return img


def _fmt(v) -> str:
    return "" if v is None else f"{v:.2f}" if isinstance(v, float) else html.escape(str(v))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(summary: dict) -> str:
    stats = ["n", "mean", "sd", "ci_low", "ci_high"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Expert review summary</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1c2430;max-width:80rem}}
table{{border-collapse:collapse;margin:0.5rem 0 1.5rem}}th,td{{padding:0.25rem 0.7rem;border-bottom:1px solid #d9dee5;
text-align:left}}td{{font-variant-numeric:tabular-nums}}img{{max-width:100%;border:1px solid #d9dee5}}</style></head>
<body><h1>Expert review summary</h1>
<p>{summary['answers']} answers on {summary['videos']} videos by {len(summary['raters'])} raters. Scores 1-5; intervals
are 95% (t interval of the mean; alpha: percentile bootstrap over videos, {summary['bootstrap']['resamples']} resamples).
Files beside this page: answers.csv, comments.csv, events.csv, summary_*.csv, agreement.csv, summary.json.</p>
<h2>Per criterion</h2><img src="criteria.png" alt="mean rating per criterion">
{_table(summary['by_criterion'], ['label', 'source', *stats])}
<h2>Inter-rater agreement (Krippendorff's alpha, ordinal)</h2><img src="agreement.png" alt="Krippendorff's alpha">
{_table(summary['agreement'], ['label', 'alpha', 'ci_low', 'ci_high', 'units', 'raters'])}
<h2>Per phase</h2>{_table(summary['by_phase'], ['criterion', 'phase', 'source', *stats])}
<h2>Per rater</h2>{_table(summary['by_rater'], ['criterion', 'rater', *stats])}
</body></html>
"""
