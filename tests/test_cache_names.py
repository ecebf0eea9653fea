"""Cache file names for every valid clip id: ids whose `<id>.safetensors` would pass the file-system limit get a
shortened, unique name that index.csv maps back to the id; short ids keep the name existing caches have."""

from __future__ import annotations

import csv
import json

import torch

from ophora.core.files import NAME_MAX
from ophora.core.latent_cache import clip_file, intact_entries, load_clip, read_clip_header, read_index
from ophora.core.media import write_video
from ophora.prepare.run import PrepareConfig, prepare
from test_prepare import SMALL, synthetic_clip

LONG = "a" * 251  # clips/<id>.mp4 is 255 bytes: the longest id a dataset can hold a clip file for
WIDE = "é" * 125  # 250 bytes in UTF-8, two per character
IDS = [LONG, LONG[:-1] + "b", WIDE, ".starts-with-a-dot", "case_0"]


def test_names_fit_are_unique_and_unchanged_for_short_ids(tmp_path):
    names = [clip_file(tmp_path, clip_id).name for clip_id in IDS]
    assert all(len(n.encode()) <= NAME_MAX for n in names)
    assert len(set(names)) == len(IDS)
    assert names[2].startswith("é" * 111) and "\ufffd" not in names[2]  # whole characters only
    assert clip_file(tmp_path, "case_0") == tmp_path / "clips" / "case_0.safetensors"  # as every existing cache
    assert clip_file(tmp_path, "x" * (NAME_MAX - 12)).name == "x" * (NAME_MAX - 12) + ".safetensors"


def test_prepare_caches_and_indexes_ids_at_the_name_limit(tiny_model, tmp_path):
    dataset = tmp_path / "dataset"
    (dataset / "clips").mkdir(parents=True)
    for i, clip_id in enumerate(IDS):
        write_video(dataset / "clips" / f"{clip_id}.mp4", synthetic_clip(i), fps=8)
    with (dataset / "instructions.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("clip id", "instruction"), *((i, f"Step {n} of the surgery.") for n, i in enumerate(IDS))])
    out = tmp_path / "cache"
    config = PrepareConfig(dataset=dataset, model=str(tiny_model), out=out, **SMALL)
    first = prepare(config)
    assert (first.made, first.rejected, first.failed) == (len(IDS), 0, 0)
    entries, damaged = intact_entries(out, read_index(out))
    assert sorted(e.clip_id for e in entries) == sorted(IDS) and not damaged
    for entry in entries:  # each file holds its own clip
        meta, _ = read_clip_header(out / entry.file)
        assert meta["clip id"] == entry.clip_id and (out / entry.file) == clip_file(out, entry.clip_id)
        assert torch.isfinite(load_clip(out / entry.file)["latent_mean"]).all()
    assert json.loads((out / "cache.json").read_text())["counts"]["clips"] == len(IDS)
    again = prepare(config)  # a rerun finds every clip under its (shortened) name
    assert (again.made, again.skipped) == (0, len(IDS))
