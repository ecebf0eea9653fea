"""The experiment's page: the training sets side by side, confusion matrices and learning curves as PNG."""

from __future__ import annotations

import html
import io
from pathlib import Path

from ophora.core.files import write_bytes, write_text


def _png(path: Path, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = draw(plt)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_bytes(path, buffer.getvalue())
    return path.name


def confusion_png(path: Path, name: str, phases: list[str], confusion: list[list[int]]) -> str:
    """A segment-level confusion matrix (rows: true phase, columns: predicted), counts written in."""
    def draw(plt):
        size = max(4.0, 0.45 * len(phases) + 2)
        figure, ax = plt.subplots(figsize=(size, size))
        ax.imshow(confusion, cmap="Blues")
        ax.set_xticks(range(len(phases)), phases, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(phases)), phases, fontsize=8)
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=7)
        ax.set_xlabel("predicted phase")
        ax.set_ylabel("true phase")
        ax.set_title(f"{name}: test segments")
        return figure
    return _png(path, draw)


def learning_png(path: Path, runs: dict) -> str:
    """Training loss and validation top-1 per epoch, one line per training set."""
    def draw(plt):
        figure, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
        for name, run in runs.items():
            epochs = [h["epoch"] for h in run["history"]]
            loss_ax.plot(epochs, [h["train_loss"] for h in run["history"]], marker="o", label=name)
            if all("val_top1" in h for h in run["history"]):
                val_ax.plot(epochs, [h["val_top1"] for h in run["history"]], marker="o", label=name)
        loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
        val_ax.set(xlabel="epoch", ylabel="top-1 (clips)", title="validation top-1", ylim=(0, 1))
        loss_ax.legend()
        val_ax.legend()
        return figure
    return _png(path, draw)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def write_report(out: Path, result: dict) -> Path:
    """`out/report.html` with its PNGs; the training sets are the columns of every table."""
    runs, phases = result["runs"], result["phases"]
    names = list(runs)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)

    def row(label: str, values) -> str:
        return f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>"

    summary = [row("training clips (videos)", [f"{r['train']['clips']} ({r['train']['videos']})" for r in runs.values()]),
               row("phase top-1 (test segments)", [_pct(r["test"]["segment"]["top1"]) for r in runs.values()]),
               row("macro-F1 (test segments)", [_pct(r["test"]["segment"]["macro_f1"]) for r in runs.values()]),
               row("top-1 (test clips)", [_pct(r["test"]["clip"]["top1"]) for r in runs.values()]),
               row("macro-F1 (test clips)", [_pct(r["test"]["clip"]["macro_f1"]) for r in runs.values()]),
               row("selected epoch", [str(r["selected_epoch"]) for r in runs.values()])]
    per_phase = []
    for phase in phases:
        cells = []
        for r in runs.values():
            p = r["test"]["segment"]["per_phase"][phase]
            cells.append(f"{p['precision']:.2f} / {p['recall']:.2f} / {p['f1']:.2f} (n={p['support']})")
        per_phase.append(row(phase, cells))
    images = []
    for name, r in runs.items():
        png = confusion_png(out / f"confusion_{name.replace('+', '_')}.png", name, phases, r["test"]["segment"]["confusion"])
        images.append(f"<figure><img src='{png}'><figcaption>{html.escape(name)}</figcaption></figure>")
    curve = learning_png(out / "learning_curve.png", runs)
    splits = result["splits"]
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>ophora downstream</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}figure{{display:inline-block;margin:0 1em 1em 0}}
img{{max-width:640px}}</style></head><body>
<h1>Phase recognition with and without generated videos</h1>
<p>Test set: {splits['test']['clips']} real clips of {splits['test']['videos']} held-out videos (split {html.escape(splits['source'])},
{splits['val']['videos']} validation videos). Generated: {result['generated']['clips']} clips of {result['generated']['videos']} videos.
Rows refused: {result['refused']} (refused.csv); videos failed: {result['failed']} (failures.csv).</p>
<table><tr><th></th>{head}</tr>{''.join(summary)}</table>
<h2>Per phase: precision / recall / F1 on test segments</h2>
<table><tr><th>phase</th>{head}</tr>{''.join(per_phase)}</table>
<h2>Confusion matrices</h2>{''.join(images)}
<h2>Learning curves</h2><img src="{curve}">
</body></html>"""
    return write_text(out / "report.html", text)
