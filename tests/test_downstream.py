"""`ophora downstream`: the annotation readers on real Cataract-1K and OphNet files, splits that cannot leak, clip
decoding, weights, and the experiment end to end on synthetic surgeries with known phases (CLI, refusals, resume)."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from ophora.cli import main
from ophora.core.errors import InputError, ModelError
from ophora.core.media import write_video
from ophora.downstream.annotations import read_annotations
from ophora.downstream.clips import Clip, ClipSettings, decode_clips, plan_clips
from ophora.downstream.metrics import scores
from ophora.downstream.models import build_model, load_backbone, read_weights
from ophora.downstream.splits import assign_splits, seeded_splits
from ophora.synthetic.phase_videos import PHASES, make_generated_phase_videos, make_phase_cases
from conftest import torch_threads

CATARACT_PHASES = {"Incision", "Viscoelastic", "Capsulorhexis", "Hydrodissection", "Phacoemulsification",
                   "Irrigation/Aspiration", "Capsule Pulishing", "Lens Implantation", "Lens positioning",
                   "Viscoelastic_Suction", "Anterior_Chamber Flushing", "Tonifying/Antibiotics"}


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ readers


def test_cataract1k_reader_on_the_real_annotations(real_data):
    folder = real_data / "cataract1k_phase_annotations"
    table = read_annotations([folder])
    assert len(table.files) == 56 and len({s.video for s in table.segments}) == 56
    assert {s.phase for s in table.segments} == CATARACT_PHASES
    # an independent count straight from the files: every non-empty row is read, with its own phase name
    expected, fps = Counter(), {}
    for path in sorted(folder.glob("case_*/case_*_annotations_phases.csv")):
        with open(path.with_name(path.name.replace("_annotations_phases", "_video"))) as f:
            fps[path.parent.name] = float(next(csv.DictReader(f))["fps"])
        with open(path) as f:
            expected.update(r["comment"] for r in csv.DictReader(f) if int(r["endFrame"]) > int(r["frame"]))
    assert Counter(s.phase for s in table.segments) == expected
    assert expected["Incision"] == 112 and expected["Phacoemulsification"] == 56
    for s in table.segments:  # seconds agree with frames / fps
        path, line = s.source.rsplit(":", 1)
        with open(path) as f:
            row = list(csv.DictReader(f))[int(line) - 2]
        assert s.start == pytest.approx(int(row["frame"]) / fps[s.video], abs=1.5 / fps[s.video])
        assert s.end == pytest.approx(int(row["endFrame"]) / fps[s.video], abs=1.5 / fps[s.video])
    [refused] = table.refused  # the one real row of zero length
    assert refused["video"] == "case_5063" and "empty" in refused["reason"]


def test_ophnet_reader_keeps_its_split_column(real_data):
    path = real_data / "ophnet2024_annotations" / "OphNet2024_loca_all.csv"
    table = read_annotations([path])
    with open(path, encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert len(table.segments) == len(rows) == 17508 and not table.refused
    assert Counter(s.split for s in table.segments) == Counter(r["split"] for r in rows)
    assert len({s.phase for s in table.segments}) == len({r["phase_id"] for r in rows})
    split_of, source = assign_splits(table.segments, (0.7, 0.1, 0.2), 0)
    assert source == "annotations" and {v: split_of[v] for v in split_of} == {r["video_id"]: r["split"] for r in rows}
    with pytest.raises(InputError, match="2 OphNet files"):
        read_annotations([path.parent])  # loca_all and loca_challenge_phase list the same segments


def test_inconsistent_rows_are_refused_with_a_reason(tmp_path):
    case = tmp_path / "case_7"
    case.mkdir()
    (case / "case_7_video.csv").write_text("caseId,physician,done,date,fps\n7,X,1,2024,25.0\n")
    (case / "case_7_annotations_phases.csv").write_text(
        "caseId,comment,frame,endFrame,sec,endSec\n7,Incision,25,50,1.0,2.0\n7,Incision,25,50,1.0,9.0\n"
        "8,Incision,25,50,1.0,2.0\n7,Incision,x,50,1.0,2.0\n7,,25,50,1.0,2.0\n7,Incision,50,25,2.0,1.0\n")
    ophnet = tmp_path / "OphNet2024_loca_all.csv"
    ophnet.write_text("video_id,start,end,split,phase_id\nv1,0,5,train,3\nv1,5,9,test,2\nv2,0,5,dev,1\nv3,4,2,val,1\n")
    table = read_annotations([tmp_path])
    assert [(s.video, s.start, s.end) for s in table.segments] == [("case_7", 1.0, 2.0), ("v1", 0.0, 5.0)]
    reasons = [r["reason"] for r in table.refused]
    assert len(reasons) == 8
    for expected in ("disagree with frames", "not the file's case", "must be numbers", "no phase name", "empty or negative",
                     "a video is in one split only", "'dev' is not one of"):
        assert any(expected in r for r in reasons), expected


# ------------------------------------------------------------------------------------------------ splits and clips


def test_splits_are_by_video_so_no_clip_can_leak():
    videos = [f"case_{i}" for i in range(50)]
    split_of = seeded_splits(videos, (0.7, 0.1, 0.2), seed=3)
    assert Counter(split_of.values()) == {"train": 35, "val": 5, "test": 10}
    assert split_of == seeded_splits(list(reversed(videos)), (0.7, 0.1, 0.2), seed=3)  # order of input is irrelevant
    assert split_of != seeded_splits(videos, (0.7, 0.1, 0.2), seed=4)
    settings = ClipSettings(frames=16, size=32, fps=8.0, per_segment=4)
    seen = defaultdict(set)
    for v in videos:
        for start in (0.0, 30.0, 100.0):
            for times in plan_clips(start, start + 20.0, settings):
                seen[v].add(split_of[v])  # a clip finds its split only through its video
                assert start <= times[0] and times[-1] <= start + 20.0
    assert all(len(s) == 1 for s in seen.values())
    by_split = defaultdict(set)
    for v, s in split_of.items():
        by_split[s].add(v)
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])


def test_decoded_clips_hold_the_frames_shown_at_their_times(tmp_path):
    levels = np.arange(20) * 12  # frame i is uniformly grey at 12 * i
    frames = np.repeat(levels[:, None, None, None], 48 * 64 * 3, 1).reshape(20, 48, 64, 3).astype(np.uint8)
    path = write_video(tmp_path / "ramp.mp4", frames, fps=10, qp=0)
    clips = [Clip("a", "p", (0.0, 0.34, 1.05)), Clip("b", "p", (1.9, 1.95)), Clip("c", "p", (1.9, 2.6))]
    decoded, last = decode_clips(path, clips, size=32)
    assert decoded[0].shape == (3, 32, 32, 3) and last == pytest.approx(1.9)
    assert [round(float(f.mean()) / 12) for f in decoded[0]] == [0, 3, 10]
    assert [round(float(f.mean()) / 12) for f in decoded[1]] == [19, 19]
    assert decoded[2] is None  # 2.6 s is past the last frame


def test_a_replaced_video_is_cut_again_and_its_run_is_not_reused(tmp_path):
    """Clips are reused only from the same video file: a video replaced under its name (a generated video sampled
    again with new weights) is cut again, and the identity of every run using it changes (no stale result)."""
    import os

    from ophora.downstream.annotations import Segment
    from ophora.downstream.run import Job, extract
    from ophora.downstream.train import Item, Run, run_identity

    def grey(level: int) -> np.ndarray:
        return np.full((20, 48, 64, 3), level, np.uint8)

    video = write_video(tmp_path / "incision_1" / "0.mp4", grey(40), fps=10, qp=0)
    job = Job("incision_1/0", video, (Segment("incision_1/0", "Incision", 0.0, 0.0, "m:2"),), generated=True)
    settings = ClipSettings(frames=4, size=32, fps=4, per_segment=1)

    def cut() -> tuple[Path, Run]:
        name, clips, _ = extract(job, settings, tmp_path / "clips")
        items = [Item(tmp_path / "clips" / name, tensor, 0, c.segment, job.video) for tensor, c in clips]
        return tmp_path / "clips" / name, Run("real+generated", items, [], [])

    path, run = cut()
    made, identity = path.stat().st_mtime_ns, run_identity(run, ["Incision"], {"epochs": 1})
    assert cut()[0].stat().st_mtime_ns == made and run_identity(cut()[1], ["Incision"], {"epochs": 1}) == identity
    before = video.stat().st_mtime_ns
    write_video(video, grey(200), fps=10, qp=0)  # the same name and length, other pixels
    os.utime(video, ns=(before + 10**9, before + 10**9))  # written a second later, as a new sampling run is
    path, run = cut()
    from safetensors.torch import load_file

    clip = load_file(path)[run.train[0].name]
    assert abs(float(clip.float().mean()) - 200) < 3  # the new video's frames, not the cached old ones
    assert run_identity(run, ["Incision"], {"epochs": 1}) != identity


def test_scores_by_hand():
    result = scores(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert result["top1"] == pytest.approx(3 / 5)
    assert result["per_phase"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert result["per_phase"]["b"]["precision"] == pytest.approx(2 / 3) and result["per_phase"]["b"]["recall"] == 1
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert result["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


class Payload:
    """An object a pickle could construct: weights_only refuses it."""


def test_k400_weights_load_into_the_backbone_and_bad_files_are_refused(tmp_path):
    torch.manual_seed(1)
    k400 = build_model("mvit_v2_tiny", 400, 8, 32)
    torch.save({f"module.{k}": v for k, v in k400.state_dict().items()}, tmp_path / "k400.pth")
    model = build_model("mvit_v2_tiny", 5, 8, 32)
    load_backbone(model, "mvit_v2_tiny", read_weights(tmp_path / "k400.pth"), tmp_path / "k400.pth")
    assert torch.equal(model.conv_proj.weight, k400.conv_proj.weight)
    assert model.head[1].weight.shape == (5, 48)
    with pytest.raises(ModelError, match="does not fit"):
        load_backbone(build_model("mvit_v2_tiny", 5, 8, 48), "mvit_v2_tiny", read_weights(tmp_path / "k400.pth"),
                      tmp_path / "k400.pth")
    torch.save({"x": Payload()}, tmp_path / "pickled.pth")  # arbitrary objects are not unpickled
    with pytest.raises(ModelError, match="not a readable weights file"):
        read_weights(tmp_path / "pickled.pth")


def test_one_line_errors(tmp_path, capsys):
    assert main(["downstream", "--annotations", str(tmp_path / "none"), "--videos", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2
    assert "--annotations" in capsys.readouterr().err
    assert main(["downstream", "--annotations", str(tmp_path), "--videos", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--clip-frames", "8", "--split-fractions", "0.5,0.5,0"]) == 2
    err = capsys.readouterr().err
    assert "--split-fractions" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ end to end

HELD_OUT = "Lens Implantation"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> dict:
    """Synthetic surgeries: training cases never show HELD_OUT, test cases do; generated videos add it."""
    torch.manual_seed(0)  # whatever earlier tests drew from the global generators
    np.random.seed(0)
    root = tmp_path_factory.mktemp("downstream")
    seen = [p for p in PHASES if p != HELD_OUT]
    cases = {f"case_{i}": seen for i in range(1, 7)} | {f"case_{i}": list(PHASES) for i in range(7, 10)}
    make_phase_cases(root / "real", cases, seconds=4.5)
    with open(root / "real" / "annotations" / "case_9" / "case_9_annotations_phases.csv", "a") as f:
        f.write("9,Incision,240,280,30.0,35.0\n")  # past the end of the 22.5 s video
    missing = root / "real" / "annotations" / "case_77"
    missing.mkdir()
    (missing / "case_77_video.csv").write_text("caseId,physician,done,date,fps\n77,X,1,2024,8.0\n")
    (missing / "case_77_annotations_phases.csv").write_text("caseId,comment,frame,endFrame,sec,endSec\n"
                                                            "77,Incision,8,24,1.0,3.0\n")  # no video for it
    make_generated_phase_videos(root / "gen", {HELD_OUT: 12, "Suturing": 1})  # Suturing: not an annotated phase
    with open(root / "gen" / "manifest.csv", "a") as f:
        f.write("incision_1,0,an incision,incision_1/0.mp4\n")  # its file is missing
    (root / "splits.csv").write_text("video,split\n" + "".join(
        f"case_{i},{'train' if i <= 6 else 'val' if i == 7 else 'test'}\n" for i in range(1, 10)) + "case_77,train\n")
    args = ["downstream", "--annotations", str(root / "real" / "annotations"), "--videos", str(root / "real" / "videos"),
            "--synthetic", str(root / "gen"), "--out", str(root / "out"), "--splits", str(root / "splits.csv"),
            "--model", "mvit_v2_tiny", "--clip-frames", "8", "--clip-size", "32", "--clip-fps", "4",
            "--clips-per-segment", "2", "--epochs", "12", "--batch-size", "8", "--lr", "2e-3", "--workers", "0"]
    with torch_threads(1):  # restored after: later tests compare in-process runs with subprocesses
        code = main(args)
    return {"root": root, "out": root / "out", "args": args, "code": code,
            "result": json.loads((root / "out" / "results.json").read_text())}


def test_learns_above_chance_and_generated_videos_teach_the_held_out_phase(experiment):
    assert experiment["code"] == 0
    result = experiment["result"]
    assert result["phases"] == sorted(PHASES)
    real, mixed = result["runs"]["real"], result["runs"]["real+generated"]
    assert real["train"] == {"clips": 6 * 3 * 2, "videos": 6}
    assert mixed["train"] == {"clips": 6 * 3 * 2 + 12, "videos": 6 + 12}
    assert result["splits"]["test"] == {"videos": 2, "clips": 2 * 4 * 2}  # the same test clips for both runs
    seen = [p for p in PHASES if p != HELD_OUT]
    # chance is 1/4; the real-only network recognises the phases it saw and never the one it did not
    assert real["test"]["segment"]["top1"] >= 0.6
    assert np.mean([real["test"]["segment"]["per_phase"][p]["recall"] for p in seen]) >= 0.8
    assert real["test"]["clip"]["per_phase"][HELD_OUT]["recall"] == 0.0
    # generated videos of the phase teach it (clip level: two test segments give only two segment votes); over
    # seeds 0-9 the held-out recall was 0.5-1.0 and top-1 rose from 0.75 to 0.875-1.0
    assert mixed["test"]["clip"]["per_phase"][HELD_OUT]["recall"] >= 0.5
    assert mixed["test"]["clip"]["top1"] > real["test"]["clip"]["top1"]


def test_bad_rows_are_refused_with_reasons_and_the_run_goes_on(experiment):
    with open(experiment["out"] / "refused.csv") as f:
        refused = list(csv.DictReader(f))
    reasons = {r["video"]: r["reason"] for r in refused}
    assert "ends past the end" in reasons["case_9"]
    assert "no video case_77" in reasons["case_77"]
    assert "'suturing' is not an annotated phase" in reasons["suturing_1/0"]
    assert "not found" in reasons["incision_1/0"]
    assert len(refused) == experiment["result"]["refused"] == 4


def test_outputs_and_resume(experiment, capsys):
    out = experiment["out"]
    page = (out / "report.html").read_text()
    assert "real+generated" in page and HELD_OUT in page
    for png in ("confusion_real.png", "confusion_real_generated.png", "learning_curve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "runs" / "real" / "best.safetensors").stat().st_mtime_ns
    assert main(experiment["args"]) == 0  # a rerun finds every run done
    assert json.loads((out / "results.json").read_text())["runs"] == experiment["result"]["runs"]
    assert (out / "runs" / "real" / "best.safetensors").stat().st_mtime_ns == before
    assert main([*experiment["args"][:-2], "--epochs", "6", "--workers", "0"]) == 2  # other settings: refused
    assert "other settings (epochs differ)" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["result", "checkpoint weights", "selected weights"])
def test_a_damaged_run_file_is_recomputed_with_a_warning_to_the_same_result(damage, tmp_path, caplog):
    """A damaged result.json is tested again from the checkpoint; a damaged checkpoint (or selected weights) trains
    the run from the start: a warning naming the folder, and the result the undamaged run had (no traceback)."""
    real = make_phase_cases(tmp_path / "real", {f"case_{i}": list(PHASES[:3]) for i in range(1, 5)}, seconds=1.0)
    args = ["downstream", "--annotations", str(real / "annotations"), "--videos", str(real / "videos"),
            "--model", "mvit_v2_tiny", "--clip-frames", "8", "--clip-size", "32", "--clip-fps", "4", "--epochs", "2",
            "--workers", "0", "--out", str(tmp_path / "out")]
    with torch_threads(1):
        assert main(args) == 0
        first = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
        run = tmp_path / "out" / "runs" / "real"
        if damage != "result":
            (run / "result.json").unlink()
        target = {"result": run / "result.json", "checkpoint weights": run / "checkpoint" / "model.safetensors",
                  "selected weights": run / "best.safetensors"}[damage]
        target.write_bytes(b"damaged" * 20)
        assert main(args) == 0
    expected = "testing the run again" if damage == "result" else \
        f"the checkpoint in {run / 'checkpoint'} is damaged"
    assert expected in caplog.text and "Traceback" not in caplog.text
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"] == first
