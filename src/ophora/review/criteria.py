"""The rating criteria: the paper's seven (ophora.md section 4) by default, or one a line from a text file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ophora.core.errors import InputError
from ophora.core.tables import read_text_file, slug

SCALE = (1, 5)  # every criterion is rated on this scale (1 = not at all, 5 = fully)


@dataclass(frozen=True)
class Criterion:
    key: str  # short machine name (column values in the export)
    label: str  # what the rater reads
    help: str = ""  # one line explaining what 1 and 5 mean


DEFAULT_CRITERIA = (
    Criterion("phase_matching", "Phase matching", "Does the video show the intended surgical phase and instruction?"),
    Criterion("anatomical_realism", "Anatomical realism", "Eye structures (cornea, iris, pupil, lens, capsule) look real."),
    Criterion("action_realism", "Action realism", "The surgical action is performed as a surgeon would."),
    Criterion("instrument_realism", "Instrument realism", "Instruments look and move like real ones."),
    Criterion("temporal_coherence", "Temporal coherence", "Motion is smooth; nothing appears, vanishes or morphs."),
    Criterion("visual_quality", "Visual quality", "Sharpness, colour and lighting of a real microscope video."),
    Criterion("clinical_plausibility", "Overall clinical plausibility", "Could this come from a real cataract surgery?"),
)


def read_criteria(path: Path) -> tuple[Criterion, ...]:
    """Criteria from a UTF-8 text file: one a line, `Label` or `Label: explanation`; blank and # lines skipped."""
    criteria, seen = [], set()
    for number, line in enumerate(read_text_file(path, "criteria file").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, _, help_text = (part.strip() for part in line.partition(":"))
        key = slug(label)
        if not key:
            raise InputError(f"{path} line {number}: a criterion needs a name with letters or digits")
        if len(label) > 80 or len(help_text) > 300:
            raise InputError(f"{path} line {number}: keep a name under 80 and its explanation under 300 characters")
        if key in seen:
            raise InputError(f"{path} line {number}: criterion {label!r} is listed twice")
        seen.add(key)
        criteria.append(Criterion(key, label, help_text))
    if not criteria:
        raise InputError(f"{path} lists no criteria (one a line: 'Name' or 'Name: explanation')")
    if len(criteria) > 20:
        raise InputError(f"{path} lists {len(criteria)} criteria; at most 20 fit on a rater's screen")
    return tuple(criteria)
