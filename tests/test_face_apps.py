"""Face detection, head pose and tracking on real weights and real photos: the runtime's MTCNN cascade
against facenet-pytorch's own, the task scoring and gold-set variants, and (on the `built` tree) the
face apps end to end: stages.faces' numbers and the tracking CLI on a video of real faces."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT, run
from stages.core.config import DatasetConfig, ImageItem, NpyConfig, LabelRun, Variant
from stages.core.datasets import gold_images
from stages.core.tasks import pose_consistency, scoring

PHOTOS = {"astronaut.png": ("scikit-image", [140, 20, 310, 190]), "grace_hopper.jpg": ("matplotlib", [145, 100, 385, 340]),
          "camera.png": ("scikit-image", [188, 112, 265, 199])}


@pytest.fixture(scope="module")
def float_detector():
    from runtime.tasks.face_detection import FaceDetector
    from stages.faces import float_net

    return FaceDetector(*(float_net(f"mtcnn_{net}") for net in ("pnet", "rnet", "onet")))


def _photo(name: str) -> np.ndarray:
    from stages.core.datasets import locate

    source, _ = PHOTOS[name]
    return np.asarray(Image.open(locate(source, name)).convert("RGB"))


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_runtime_cascade_matches_facenet_pytorch_on_real_photos(float_detector, name):
    from facenet_pytorch import MTCNN

    rgb = _photo(name)
    ours, scores = float_detector.detect(rgb)
    theirs, probs = MTCNN(keep_all=True).detect(Image.fromarray(rgb))
    theirs = np.asarray(theirs, np.float64)[np.asarray(probs) > 0.9]
    assert len(ours) == len(theirs) == 1, (ours, theirs)
    a, b = ours[0], theirs[0]
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    iou = inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    assert iou > 0.85, f"{name}: IoU {iou:.3f} between the runtime cascade and facenet-pytorch"
    assert scores[0] > 0.99


def test_detector_rejects_a_float_image_naming_what_it_takes(float_detector):
    with pytest.raises(ValueError, match="HxWx3 uint8 RGB"):
        float_detector.detect(np.zeros((64, 64, 3), np.float32))


def test_gold_variants_are_the_mirrored_and_turned_crops():
    ds = DatasetConfig(name="t", items=[ImageItem(source="scikit-image", file="astronaut.png", box=[140, 20, 310, 190],
                                                  label=1)],
                       variants=[Variant.mirror, Variant.rotate_cw, Variant.rotate_ccw], variant_degrees=15.0)
    samples = gold_images(ds)
    assert [s[0] for s in samples] == ["astronaut.png@140,20,310,190" + v for v in
                                       ("", "|mirror", "|rotate_cw", "|rotate_ccw")]
    crop, mirror, cw, ccw = (np.asarray(s[1]) for s in samples)
    assert crop.shape == (170, 170, 3) and np.array_equal(mirror, crop[:, ::-1])
    assert not np.array_equal(cw, crop) and not np.array_equal(cw, ccw)  # turned about the crop's centre, no crop shift


def test_window_and_grey_recast_every_crop_as_another_sets_windows():
    """blazeface_validation: faces from other sources made into lfw_subset's kind of window (25x25 grey),
    variants included, so selection sees the gold set's kind of input without reading it."""
    ds = DatasetConfig(name="t", items=[ImageItem(source="scikit-image", file="astronaut.png", box=[140, 20, 310, 190],
                                                  label=1)], variants=[Variant.mirror, Variant.rotate_cw],
                       window=[25, 25], grey=True)
    samples = gold_images(ds)
    assert len(samples) == 3
    for _, image, accepted in samples:
        pixels = np.asarray(image)
        assert image.size == (25, 25) and accepted == {1}
        assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    assert np.array_equal(np.asarray(samples[1][1]), np.asarray(samples[0][1])[:, ::-1])


def test_npy_gold_set_labels_runs_and_slices():
    ds = DatasetConfig(name="lfw", npy=NpyConfig(source="scikit-image", file="lfw_subset.npy",
                                                  runs=[LabelRun(1, 100), LabelRun(0, 100)], start=95, count=10))
    samples = gold_images(ds)
    assert [s[2] for s in samples] == [{1}] * 5 + [{0}] * 5
    assert samples[0][0] == "lfw_subset.npy#95" and samples[0][1].size == (25, 25)


def test_face_scoring_counts_recall_and_false_positives_at_the_stage_threshold():
    probs = np.array([[0.1, 0.9], [0.4, 0.6], [0.8, 0.2], [0.3, 0.7]])
    out = np.concatenate([np.zeros((4, 4)), probs], 1)[:, :, None, None]  # P-Net layout, 1x1 map
    s = scoring("face_classification").score(out, [{1}, {1}, {0}, {0}], ["a", "b", "c", "d"], {"threshold": 0.65})
    assert s["recall"] == 50.0 and s["false_positives"] == 1 and s["top1"] == 75.0


def test_pose_consistency_reads_mirror_and_turn_variants():
    ids = ["a", "a|mirror", "a|rotate_cw", "a|rotate_ccw"]
    deg = np.array([[20.0, -5.0, 3.0], [-18.0, -5.5, -2.0], [20.0, -5.0, 3.0 - 14.0], [20.0, -5.0, 3.0 + 16.0]])
    c = pose_consistency(deg, ids, 15.0)
    assert c["mirror_yaw_mae"] == pytest.approx(2.0) and c["mirror_roll_mae"] == pytest.approx(1.0)
    assert c["mirror_pitch_mae"] == pytest.approx(0.5)
    assert c["rotation_roll_gain"] == pytest.approx(1.0, abs=1e-9) and c["rotation_pairs"] == 2


# ------------------------------------------------------------------ on the built tree
pipeline = pytest.mark.pipeline


@pipeline
def test_faces_stage_measured_recall_false_positives_and_stable_tracks(built):
    """Every detectors entry of conf/builds.yaml, both families, measured on float and on the artifacts."""
    faces = json.loads((built / "artifacts" / "faces.json").read_text())
    plan = yaml.safe_load((built / "conf" / "builds.yaml").read_text())
    assert [d["detector"] for d in faces["detectors"]] == list(plan["detectors"])
    assert {d["family"] for d in faces["detectors"]} == {"mtcnn", "blazeface"}
    for d in faces["detectors"]:
        for side in ("float", "artifact"):
            assert d["lfw"][side]["recall"] >= 95.0 and d["lfw"][side]["false_positives"] <= 2, d["lfw"]
        found = [p["float_found"] for p in d["photos"]]
        # BlazeFace is the short-range model: messi5.jpg's 75-px face in a 548-px-wide photo is about 17 px
        # once the photo is letterboxed to 128, below its scale, and float finds no face there either
        assert all(found) if d["family"] == "mtcnn" else sum(found) >= 3, d["photos"]
        assert sum(p["artifact_found"] for p in d["photos"]) >= 3
        assert d["tracking"]["decode_ms_per_frame"] > 0 and len(d["tracking"]["face_heights_px"]) == 3
        assert d["tracking"]["size"] == ([640, 480] if d["family"] == "blazeface" else [640, 360])
        for mode in ("detect+track", "detect+track+headpose"):
            t = d["tracking"][mode]
            assert t["stable"] and t["distinct_ids"] == 3 and t["fps"] > 0, t
            assert min(t["frames_covered"]) >= 55  # of 60 frames
            # where a frame's time goes, part by part, adding up to the frame's time
            assert set(t["mean_parts_ms"]) == {"detect", "track", "pose", "draw"}, t
            assert sum(t["mean_parts_ms"].values()) == pytest.approx(t["mean_frame_ms"], rel=0.05)
        assert d["tracking"]["detect+track"]["mean_parts_ms"]["pose"] < 0.1  # no head pose in that mode


@pipeline
def test_headpose_build_scored_against_float_with_consistency(built):
    (folder,) = [p for p in (built / "artifacts" / "whenet" / "rpi4").iterdir() if p.is_dir()]
    m = json.loads((folder / "metrics.json").read_text())
    assert m["task"] == "head_pose" and m["passed"], m["failures"]
    assert m["fidelity"]["error"] <= m["budget"]["max_error"]
    for side in ("float", "artifact"):
        # every crop of the gold set (its photos and video-frame faces) mirrored once and turned both ways
        assert m[side]["mirror_pairs"] == m["sources"] and m[side]["rotation_pairs"] == 2 * m["sources"], m[side]
        assert 0.5 < abs(m[side]["rotation_roll_gain"]) < 1.5, m[side]
        assert m[side]["mirror_yaw_mae"] < 10.0


@pipeline
def test_tracking_cli_end_to_end_on_real_artifacts(built, tmp_path):
    from stages.core.facevideo import make_face_video

    make_face_video(tmp_path / "in.mp4", frames=30)
    nets = [str(built / f"artifacts/mtcnn_{n}/rpi4/int8_static_minmax/model.onnx") for n in ("pnet", "rnet", "onet")]
    (pose,) = (built / "artifacts" / "whenet" / "rpi4").glob("*/model.onnx")
    out = run([sys.executable, "-m", "runtime.apps.track", "--source", str(tmp_path / "in.mp4"), "--detector", *nets,
               "--headpose", str(pose), "--min-face", "40", "--output", str(tmp_path / "out.mp4"),
               "--json", str(tmp_path / "tracks.json")], ROOT).stdout
    result = json.loads((tmp_path / "tracks.json").read_text())
    assert result["summary"]["frames"] == 30 and result["summary"]["distinct_ids"] == 3, out
    assert all("pose" in t for f in result["frames"][3:] for t in f["tracks"] if t["matched"])
    assert (tmp_path / "out.mp4").stat().st_size > 10_000
