"""How well a refiner keeps a narration's action and drops what a video cannot show, on a labelled set.

A labelled narration (CSV columns `style,narration,keep,drop`) names the terms its instruction must keep (`;`
between terms, `|` between accepted spellings, matched at a word start so "emulsif" accepts "emulsify") and the
non-visual phrases it must not keep. An instruction passes when it holds every keep term, none of the drop
phrases and no filler, does not repeat a run of three words (a rolling caption kept twice) and does not end on a
dangling word ("... with the keratome at."); a narration without keep terms shows nothing and must give "".

    python -m ophora.curate.refine_quality tests/data/narrations_labelled.csv [--refiner openai --llm-url ...]
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ophora.core.errors import InputError

FILLERS = ("um", "uh", "erm", "you know", "gonna", "basically")
DANGLING = {"a", "an", "the", "and", "or", "with", "to", "of", "at", "in", "on", "into", "by", "for", "from", "you",
            "we", "i", "can", "is", "are", "this", "that", "so", "but", "then"}


@dataclass
class Labelled:
    style: str
    narration: str
    keep: list[str]
    drop: list[str]


def read_labelled(path: Path) -> list[Labelled]:
    """The labelled narrations of a CSV with columns style, narration, keep, drop."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"style", "narration", "keep", "drop"} <= set(reader.fieldnames or ()):
            raise InputError(f"{path} needs the columns style, narration, keep, drop")
        return [Labelled(r["style"], r["narration"], [t for t in r["keep"].split(";") if t],
                         [t for t in r["drop"].split(";") if t]) for r in reader]


def _has(text: str, term: str) -> bool:
    return any(re.search(r"(?<![\w/])" + re.escape(spelling.lower()), text) for spelling in term.split("|"))


def problems(instruction: str, item: Labelled) -> list[str]:
    """What is wrong with one instruction ([] when it passes)."""
    text = instruction.lower()
    if not item.keep:
        return [] if not instruction else ["shows nothing, should be empty"]
    found = [f"lost {t!r}" for t in item.keep if not _has(text, t)]
    found += [f"kept {t!r}" for t in item.drop if re.search(rf"\b{re.escape(t.lower())}\b", text)]
    found += [f"filler {f!r}" for f in FILLERS if re.search(rf"\b{f}\b", text)]
    words = re.findall(r"[\w/'-]+", text)
    runs = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if len(set(runs)) < len(runs):
        found.append("repeats itself")
    if words and words[-1] in DANGLING:
        found.append(f"ends on {words[-1]!r}")
    return found


def quality(instructions: Sequence[str], items: Sequence[Labelled]) -> dict:
    """Share of passing instructions per style and overall, and every failure with its reasons."""
    per_style: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    failures = []
    for instruction, item in zip(instructions, items, strict=True):
        wrong = problems(instruction, item)
        per_style[item.style][0] += not wrong
        per_style[item.style][1] += 1
        if wrong:
            failures.append({"style": item.style, "narration": item.narration, "instruction": instruction,
                             "problems": wrong})
    passed, total = sum(v[0] for v in per_style.values()), sum(v[1] for v in per_style.values())
    return {"share": round(passed / max(total, 1), 3), "passed": passed, "narrations": total,
            "per_style": {s: {"share": round(p / n, 3), "passed": p, "narrations": n} for s, (p, n) in per_style.items()},
            "failures": failures}


def main() -> None:
    import argparse
    import json

    from ophora.core.config import add_options, from_args
    from ophora.curate.refine import RefineConfig, make_refiner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labelled", type=Path)
    add_options(parser, RefineConfig)
    args = parser.parse_args()
    items = read_labelled(args.labelled)
    refiner = make_refiner(from_args(RefineConfig, args))
    result = quality(refiner.refine([i.narration for i in items]), items)
    print(json.dumps({"refiner": refiner.name, "version": refiner.version, **result}, indent=1))


if __name__ == "__main__":
    main()
