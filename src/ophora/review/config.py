"""The settings of `ophora review create | add-rater | serve | export` (CLI flags are made from the fields)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ophora.core.config import option

STUDY_HELP = "study folder (study.sqlite + media/)"


@dataclass
class CreateConfig:
    study: Path = option(help=STUDY_HELP + "; made if new, extended with the videos it lacks if not", positional=True)
    generated: Path | None = option(None, "folder written by 'ophora sample' (its manifest.csv lists the videos)")
    real: Path | None = option(None, "real videos to mix in blinded: an Ophora-160K dataset folder or any folder of videos")
    per_rater: int | None = option(None, "videos each rater rates (default: all); the least-rated videos are given first")
    criteria: Path | None = option(None, "text file, one criterion a line ('Name' or 'Name: explanation'); "
                                         "default: the paper's seven")
    seed: int | None = option(None, "seed of the per-rater orders (default: random, kept in the study)")


@dataclass
class AddRaterConfig:
    study: Path = option(help=STUDY_HELP, positional=True)
    name: str = option(help="the rater's name (shown only to the admin and in the export)", positional=True)
    admin: bool = option(False, "an admin link (progress view) instead of a rater link")
    replace: bool = option(False, "give an existing rater a new link; the old one stops working")
    url: str = option("http://127.0.0.1:8000", "address raters reach the server at (the link's start)")


@dataclass
class ServeConfig:
    study: Path = option(help=STUDY_HELP, positional=True)
    host: str = option("127.0.0.1", "address to listen on (another than localhost only behind an HTTPS proxy)")
    port: int = option(8000, "port to listen on")


@dataclass
class ExportConfig:
    study: Path = option(help=STUDY_HELP, positional=True)
    out: Path = option(help="folder for answers.csv, comments.csv, events.csv and the summary (HTML, CSV, JSON, PNG)")
    bootstrap: int = option(1000, "bootstrap resamples for the interval of Krippendorff's alpha")
    seed: int = option(0, "seed of the bootstrap")
