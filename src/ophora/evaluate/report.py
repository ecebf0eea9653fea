"""`OUT/report.html`: the metrics, per-phase tables, plots (PNG) and example frames, including every video the
privacy detector flags and the generated videos closest to a training clip, side by side."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ophora.core.files import atomic_path, write_bytes, write_text


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _plot(path: Path, draw) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    draw(ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path.name


def _image(folder: Path, name: str, jpeg: np.ndarray) -> str:
    write_bytes(folder / name, np.asarray(jpeg, np.uint8).tobytes())
    return f"report/{name}"


def write_report(out: Path, result: dict, run, real, real_values, generated, gen_values, train) -> Path:
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><meta charset='utf-8'><title>ophora evaluate</title><style>body{{font-family:sans-serif;"
             f"margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}"
             f"img{{max-width:100%}}</style><h1>ophora evaluate</h1>"
             f"<p>{len(generated)} generated vs {len(real)} real videos"
             f"{f', {len(train)} training clips' if train else ''}.</p>"]
    rows = "".join(f"<tr><th>{k}</th><td>{_fmt(result.get(k))}</td><td>{html.escape(result['protocols'].get(p, ''))}"
                   f"</td></tr>" for k, p in (("fid", "fid"), ("fvd", "fvd"), ("clipscore", "clipscore"),
                                              ("leakage_rate", "leakage"), ("memorisation_rate", "memorisation"),
                                              ("temporal_consistency", "temporal")))
    parts.append(f"<h2>Metrics</h2><table><tr><th>metric</th><th>value</th><th>protocol</th></tr>{rows}</table>")
    if result["skipped"]:
        parts.append("<h2>Skipped</h2><ul>" + "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>"
                                                     for k, v in result["skipped"].items()) + "</ul>")
    phases = result["per_phase"]
    if phases:
        keys = sorted({k for v in phases.values() for k in v if not k.endswith("reference")})
        body = "".join(f"<tr><th>{html.escape(p)}</th>" + "".join(f"<td>{_fmt(v.get(k))}</td>" for k in keys) + "</tr>"
                       for p, v in phases.items())
        parts.append("<h2>Per phase</h2><table><tr><th>phase</th>" + "".join(f"<th>{k}</th>" for k in keys) +
                     f"</tr>{body}</table>")
        numeric = [k for k in ("clipscore", "fid", "fvd", "temporal_ssim") if any(v.get(k) is not None
                                                                                    for v in phases.values())]
        for key in numeric:
            names = [p for p in phases if phases[p].get(key) is not None]

            def bars(ax, key=key, names=names):
                ax.bar(range(len(names)), [phases[p][key] for p in names], color="#4a7ab5")
                ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
                ax.set_ylabel(key)
                ax.set_title(f"{key} per phase")
            parts.append(f"<img src='report/{_plot(folder / f'phase_{key}.png', bars)}'>")
    temporal = [(v["temporal"]["ssim"], "generated") for v in gen_values if "temporal" in v] + \
               [(v["temporal"]["ssim"], "real") for v in real_values if "temporal" in v]
    if temporal:
        def hist(ax):
            for label, colour in (("real", "#999"), ("generated", "#4a7ab5")):
                values = [s for s, lab in temporal if lab == label and s == s]
                if values:
                    ax.hist(values, bins=20, alpha=0.6, label=label, color=colour)
            ax.set_xlabel("mean SSIM between consecutive frames")
            ax.legend()
        parts.append(f"<h2>Temporal consistency</h2><img src='report/{_plot(folder / 'temporal_ssim.png', hist)}'>")
    leakage = result.get("leakage")
    if leakage is not None:
        by_id = {v.id: vals for v, vals in zip(generated, gen_values)}
        parts.append(f"<h2>Privacy leakage: {len(leakage['flagged'])} of {len(generated)} flagged</h2>")
        for i, item in enumerate(leakage["flagged"]):
            src = _image(folder, f"leak_{i}.jpg", by_id[item["video"]]["thumb"])
            parts.append(f"<p>{html.escape(item['video'])}: {item['reason']} (text area {item['text_area']:.4f}, "
                         f"overlay area {item['overlay_area']:.4f})<br><img src='{src}'></p>")
    memo = result.get("memorisation")
    if memo:
        by_train = {v.id: v for v in train}
        by_id = {v.id: vals for v, vals in zip(generated, gen_values)}
        sims = [r["ssim"] for r in memo["closest"]]

        def ssim_hist(ax):
            ax.hist(sims, bins=20, color="#b5654a")
            ax.axvline(memo["threshold"], color="k", linestyle="--")
            ax.set_xlabel("best SSIM to a training clip (closest generated videos)")
        parts.append(f"<h2>Memorisation: {len(memo['flagged'])} of {len(generated)} at SSIM &ge; {memo['threshold']}"
                     f"</h2><img src='report/{_plot(folder / 'memorisation.png', ssim_hist)}'>")
        for i, row in enumerate(memo["closest"]):
            gen_src = _image(folder, f"memo_{i}_generated.jpg", by_id[row["video"]]["thumb"])
            train_src = _image(folder, f"memo_{i}_train.jpg", run.thumb(by_train[row["nearest"]]))
            parts.append(f"<p>{html.escape(row['video'])} vs training clip {html.escape(row['nearest'])}: SSIM "
                         f"{row['ssim']:.3f}, feature similarity {row['similarity']:.3f}"
                         f"{' <b>memorised</b>' if row['memorised'] else ''}<br><img src='{gen_src}'> "
                         f"<img src='{train_src}'></p>")
    parts.append("<h2>Examples</h2>")
    for label, videos, values in (("generated", generated, gen_values), ("real", real, real_values)):
        shown = [(v, vals) for v, vals in zip(videos, values) if "thumb" in vals][:run.config.examples]
        for i, (v, vals) in enumerate(shown):
            src = _image(folder, f"example_{label}_{i}.jpg", vals["thumb"])
            prompt = f": {html.escape(v.prompt)}" if v.prompt else ""
            parts.append(f"<p>{label} {html.escape(v.id)}{prompt}<br><img src='{src}'></p>")
    return write_text(out / "report.html", "\n".join(parts))
