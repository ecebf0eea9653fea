"""A training run's report page, `RUN/report.html`: loss, learning rate and gradient norm over the steps (PNG plots
in `RUN/report/`) and the validation videos of every validation step.

Written when training ends; `write_report(run)` makes it for any run folder, finished or not:

    from ophora.train.report import write_report
    write_report("runs/tpt")
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from urllib.parse import quote

from ophora.core.errors import InputError
from ophora.core.files import atomic_path, read_json, write_text

log = logging.getLogger(__name__)

PLOTS = (("loss", "loss", True), ("lr", "learning rate", False), ("grad_norm", "gradient norm", True))

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
.plots img {{ max-width: 32%; min-width: 320px; }} table {{ border-collapse: collapse; }}
td, th {{ padding: .2rem .6rem; text-align: left; border-bottom: 1px solid #ddd; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: .8rem; }}
figure {{ margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; }}
video {{ width: 100%; background: #000; }} figcaption {{ font-size: .85rem; }}
</style></head><body>
<h1>{title}</h1>
<table>{summary}</table>
<h2>Over the steps</h2>
<div class="plots">{plots}</div>
<h2>Validation videos</h2>
{validation}
</body></html>
"""


def read_metrics(path: Path) -> list[dict]:
    """The logged steps of `metrics.jsonl`, in order; damaged lines (a half-written last one) are left out."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _plot(rows: list[dict], key: str, label: str, log_scale: bool, path: Path) -> Path | None:
    """A PNG of `key` over the steps (non-finite values left out), or None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))
              and math.isfinite(r[key])]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot([s for s, _ in points], [v for _, v in points], linewidth=1)
    if log_scale and all(v > 0 for _, v in points):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(label)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _validation(run: Path, prompts: list) -> str:
    """One section per validation step (newest first) with its videos and their prompts."""
    steps = sorted((p for p in (run / "validation").glob("step-*") if p.is_dir()), reverse=True)
    if not steps:
        return "<p>No validation videos (the config has no validation_prompts, or none was rendered yet).</p>"
    sections = []
    for folder in steps:
        videos = sorted(folder.glob("*.mp4"), key=lambda p: (len(p.stem), p.stem))
        figures = []
        for video in videos:
            index = int(video.stem) if video.stem.isdigit() else -1
            prompt = str(prompts[index]) if 0 <= index < len(prompts) else video.stem
            src = quote(video.relative_to(run).as_posix())
            figures.append(f'<figure><video src="{html.escape(src, quote=True)}" controls loop muted playsinline '
                           f'preload="metadata"></video><figcaption>{html.escape(prompt)}</figcaption></figure>')
        step = folder.name.removeprefix("step-").lstrip("0") or "0"
        sections.append(f"<h3>step {html.escape(step)}</h3><div class=\"grid\">{''.join(figures)}</div>")
    return "\n".join(sections)


def write_report(run: str | Path) -> Path:
    """Write `run/report.html` (and its plots in `run/report/`) for the training run folder `run`; returns the page."""
    run = Path(run)
    if not (run / "run.json").is_file():
        raise InputError(f"{run} is not a training run folder (no run.json)")
    record = read_json(run / "run.json", "run record")
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    rows = read_metrics(run / "metrics.jsonl")
    plots = []
    for key, label, log_scale in PLOTS:
        png = _plot(rows, key, label, log_scale, run / "report" / f"{key}.png")
        if png is not None:
            plots.append(f'<img src="report/{png.name}" alt="{html.escape(label)} over the steps">')
    last = rows[-1] if rows else {}
    summary = {"model": config.get("model", ""), "mode": config.get("mode", ""), "steps logged":
               f"{last.get('step', 0)} of {config.get('steps', '?')}", "last loss": last.get("loss", ""),
               "skipped updates": sum(1 for r in rows if r.get("skipped") is True), "clips": record.get("clips", ""),
               "processes": record.get("world_size", "")}
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    page = PAGE.format(title=html.escape(f"ophora train: {run.name}"), summary=table,
                       plots="".join(plots) or "<p>No steps logged yet.</p>",
                       validation=_validation(run, list(config.get("validation_prompts") or [])))
    path = write_text(run / "report.html", page)
    log.info("wrote the training report %s", path)
    return path
