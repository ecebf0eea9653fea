"""A short HTML report of a curation run: counts, reasons, a few example clips for each, and every clip's narration
beside its instruction with the clauses the refiner dropped."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ophora.core.files import write_text
from ophora.curate.refine_rules import dropped_clauses

MAX_NARRATION_ROWS = 2000  # beyond this the report names the manifest, which holds every clip


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _example(row: pd.Series, out: Path) -> str:
    clip_id = html.escape(row["clip id"])
    caption = (f"<b>{clip_id}</b> {row['start']:.1f}-{row['end']:.1f} s<br>"
               f"<i>{html.escape(row['instruction'] or '(no instruction)')}</i><br>"
               f"<span class='narration'>{html.escape(row['narration'])}</span>")
    if row["decision"] == "keep" and (out / "clips" / f"{row['clip id']}.mp4").is_file():
        media = f'<video src="clips/{clip_id}.mp4" width="240" controls muted loop preload="metadata"></video>'
    elif (out / "thumbs" / f"{row['clip id']}.jpg").is_file():
        media = f'<img src="thumbs/{clip_id}.jpg" width="240">'
    else:
        media = ""
    return f"<figure>{media}<figcaption>{caption}</figcaption></figure>"


def _decision(row: pd.Series) -> str:
    if row["decision"] != "keep":
        return f"dropped: {row['reason']}"
    return f"kept, privacy flag: {row['privacy_reason']}" if row["privacy_reason"] else "kept, privacy-preserved"


def narration_table(manifest: pd.DataFrame, limit: int = MAX_NARRATION_ROWS) -> str:
    """Each clip's narration beside its instruction, and the narration's clauses the instruction does not use."""
    rows = []
    for _, row in manifest.head(limit).iterrows():
        dropped = "".join(f"<del>{html.escape(c)}</del><br>" for c in dropped_clauses(row["narration"], row["instruction"]))
        rows.append(f"<tr><td>{html.escape(row['clip id'])}</td><td>{html.escape(_decision(row))}</td>"
                    f"<td>{html.escape(row['narration'])}</td><td>{html.escape(row['instruction'] or '(none)')}</td>"
                    f"<td class='dropped'>{dropped}</td></tr>")
    note = (f"<p>The first {limit} of {len(manifest)} clips; manifest.parquet holds every clip's narration and "
            "instruction.</p>" if len(manifest) > limit else "")
    head = "".join(f"<th>{h}</th>" for h in ("clip id", "decision", "narration", "instruction", "dropped clauses"))
    return (f"<h2 id='narrations'>Narration and instruction</h2>{note}<table class='narrations'><tr>{head}</tr>"
            + "".join(rows) + "</table>")


def write_report(manifest: pd.DataFrame, skipped: list[dict], summary: dict, out: Path, per_reason: int = 3) -> Path:
    """Write OUT/report.html atomically; returns its path."""
    clips = summary["clips"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>ophora curate report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px}figure{display:inline-block;width:250px;vertical-align:top;margin:4px}"
        "figcaption{font-size:12px}.narration{color:#555}.narrations td{vertical-align:top;max-width:32em}"
        ".dropped{color:#a33}</style>",
        "<h1>Curation report</h1>",
        _table([("source videos", summary["sources"]["found"]), ("skipped sources", summary["sources"]["skipped"]),
                ("candidate clips", clips["candidates"]), ("kept clips", clips["kept"]),
                ("privacy-preserved clips", clips["privacy_preserved"]),
                ("kept seconds", clips["kept_seconds"]), ("mean kept clip (s)", clips["mean_kept_seconds"]),
                ("wall time (s)", summary["timings"].get("total_s", ""))], ("", "count")),
    ]
    groups = [("kept, privacy-preserved", manifest[manifest["privacy_preserved"]])]
    for reason in sorted(clips["privacy_flagged_by_reason"]):
        groups.append((f"kept, privacy flag: {reason}", manifest[(manifest["decision"] == "keep")
                                                                 & (manifest["privacy_reason"] == reason)]))
    for reason in sorted(clips["dropped_by_reason"]):
        groups.append((f"dropped: {reason}", manifest[(manifest["decision"] != "keep") & (manifest["reason"] == reason)]))
    parts.append("<h2>Decisions</h2>" + _table([(name, len(group)) for name, group in groups], ("decision", "clips")))
    for name, group in groups:
        if len(group):
            parts.append(f"<h3>{html.escape(name)} ({len(group)})</h3>")
            parts.extend(_example(row, out) for _, row in group.head(per_reason).iterrows())
    parts.append(narration_table(manifest))
    if skipped:
        parts.append("<h2>Skipped sources</h2>" + _table([(s["source"], s["reason"], s["detail"]) for s in skipped],
                                                         ("source", "reason", "detail")))
    return write_text(out / "report.html", "\n".join(parts))
