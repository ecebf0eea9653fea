"""report.html: each clip's narration beside its instruction, the clauses the refiner dropped, the example clips."""

from __future__ import annotations

from html.parser import HTMLParser

import pandas as pd

from ophora.curate.refine import make_refiner
from ophora.curate.report import narration_table, write_report

NARRATIONS = [
    "welcome back to the channel now the lens is in the bag we rotate the intraocular lens with the hook to center it",
    "This 68-year-old man has pseudoexfoliation. The capsule is stained with trypan blue.",
    "Thanks for watching, see you in the next video.",
    "The main incision is made with a keratome at the temporal limbus.",
]


class _Rows(HTMLParser):
    """The cells of the narration table: (cells, struck-through text) per row."""

    def __init__(self):
        super().__init__()
        self.rows, self.inside, self.struck = [], False, False

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("class", "narrations") in attrs:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append(([], []))
        elif self.inside and tag == "td":
            self.rows[-1][0].append("")
        self.struck = self.struck or tag == "del"

    def handle_endtag(self, tag):
        self.inside = self.inside and tag != "table"
        self.struck = self.struck and tag != "del"

    def handle_data(self, data):
        if self.inside and self.rows and self.rows[-1][0]:
            self.rows[-1][0][-1] += data
            if self.struck:
                self.rows[-1][1].append(data)


def _manifest() -> pd.DataFrame:
    instructions = make_refiner().refine(NARRATIONS)
    return pd.DataFrame({
        "clip id": [f"v_{i}" for i in range(4)], "start": [0.0, 5.0, 10.0, 15.0], "end": [5.0, 10.0, 15.0, 20.0],
        "narration": NARRATIONS, "instruction": instructions,
        "decision": ["keep", "keep", "drop", "keep"], "reason": ["", "", "no_instruction", ""],
        "privacy_reason": ["", "text", "", ""], "privacy_preserved": [True, False, False, True]})


def _rows(text: str) -> list[tuple[list[str], list[str]]]:
    parser = _Rows()
    parser.feed(text)
    return [row for row in parser.rows if row[0]]  # the header row has no td


def test_each_clip_shows_its_narration_beside_its_instruction_and_the_dropped_clauses():
    manifest = _manifest()
    rows = _rows(narration_table(manifest))
    assert [r[0][0] for r in rows] == ["v_0", "v_1", "v_2", "v_3"]
    by_id = {cells[0]: (cells, struck) for cells, struck in rows}
    cells, struck = by_id["v_0"]
    assert cells[1] == "kept, privacy-preserved" and cells[2] == NARRATIONS[0]
    assert cells[3] == "Rotate the intraocular lens with the hook to center it."
    assert struck == ["welcome back to the channel"]
    cells, struck = by_id["v_1"]
    assert cells[1] == "kept, privacy flag: text" and cells[3] == "Stain the capsule with trypan blue."
    assert struck == ["This 68-year-old man has pseudoexfoliation"]
    cells, struck = by_id["v_2"]
    assert cells[1] == "dropped: no_instruction" and cells[3] == "(none)" and len(struck) == 2  # both clauses
    assert by_id["v_3"][1] == []  # an instruction that uses the whole narration drops nothing


def test_report_holds_the_table_and_caps_it_on_large_runs(tmp_path):
    manifest = _manifest()
    summary = {"sources": {"found": 1, "skipped": 0}, "timings": {"total_s": 1.0},
               "clips": {"candidates": 4, "kept": 3, "privacy_preserved": 2, "kept_seconds": 15.0,
                         "mean_kept_seconds": 5.0, "privacy_flagged_by_reason": {"text": 1},
                         "dropped_by_reason": {"no_instruction": 1}}}
    page = write_report(manifest, [], summary, tmp_path).read_text()
    assert len(_rows(page)) == 4 and "<del>welcome back to the channel</del>" in page
    assert NARRATIONS[3] in page.split("Narration and instruction")[0]  # the example clips show it too
    big = pd.concat([manifest] * 3, ignore_index=True)
    capped = narration_table(big, limit=5)
    assert len(_rows(capped)) == 5 and "The first 5 of 12 clips" in capped
