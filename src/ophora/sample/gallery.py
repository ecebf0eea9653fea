"""A self-contained HTML page showing generated videos with their prompts and settings."""

from __future__ import annotations

import html
from urllib.parse import quote
from pathlib import Path

from ophora.core.files import write_text

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }}
video {{ width: 100%; background: #000; border-radius: 4px; image-rendering: pixelated; }}
figcaption {{ font-size: .9rem; }} .meta {{ color: #666; font-size: .8rem; margin-top: .3rem; }}
</style></head><body>
<h1>{title}</h1><p>{count} videos.</p>
<div class="grid">
{figures}
</div></body></html>
"""

FIGURE = """<figure><video src="{src}" controls loop muted playsinline preload="metadata"></video>
<figcaption><b>{clip_id}</b> #{n}<br>{prompt}<div class="meta">{meta}</div></figcaption></figure>"""


def write_gallery(out: Path, records: list[dict], title: str) -> Path:
    """Write `out/index.html` listing every record (manifest row) with its video."""
    figures = []
    for r in records:
        meta = (f"seed {r['seed']} · {r['steps']} steps · guidance {r['guidance']} · "
                f"{r['frames']} frames · {r['size']} · {r['fps']} fps · {r['seconds']} s")
        figures.append(FIGURE.format(
            src=html.escape(quote(str(r["path"])), quote=True), clip_id=html.escape(str(r["clip_id"])), n=r["n"],
            prompt=html.escape(str(r["prompt"])), meta=html.escape(meta),
        ))
    return write_text(Path(out) / "index.html",
                      PAGE.format(title=html.escape(title), count=len(records), figures="\n".join(figures)))
