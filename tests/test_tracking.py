"""The SORT tracker (runtime/tracking.py) and the face-tracking app (runtime/apps/track.py).

The app is tested with a fake detector (ground truth + deterministic jitter, a few dropped detections)
on a video made from real photos (stages/core/facevideo.py); the real detector's end-to-end test lives
with the detector."""
from __future__ import annotations

import json
import threading

import cv2
import numpy as np
import pytest

from runtime.apps import track as app
from runtime.tracking import Sort, iou_matrix
from stages.core.facevideo import make_face_video, read_frames


def box(cx: float, cy: float, w: float = 60, h: float = 80) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def feed(tracker: Sort, frames: list[list[list[float]]]) -> list[list]:
    """Run the tracker over per-frame box lists; returns the reported tracks per frame."""
    return [tracker.update(np.array(b, dtype=np.float32).reshape(-1, 4), np.full(len(b), 0.9)) for b in frames]


def ids_near(tracks: list, target: list[float], min_iou: float = 0.5) -> list[int]:
    if not tracks:
        return []
    iou = iou_matrix(np.array([target]), np.array([t.box for t in tracks]))[0]
    return [t.id for t, v in zip(tracks, iou) if v >= min_iou]


# --- tracker -------------------------------------------------------------------------------------------

def test_crossing_objects_keep_their_ids():
    # A moves right, B moves left, 30 px apart vertically: their boxes overlap heavily around frame 15,
    # and only the motion model tells them apart.
    frames = [[box(50 + 10 * f, 100), box(350 - 10 * f, 130)] for f in range(31)]
    out = feed(Sort(), frames)
    overlap = iou_matrix(np.array([frames[15][0]]), np.array([frames[15][1]]))[0, 0]
    assert overlap > 0.4  # the paths really cross
    ids_a = {i for f, tracks in enumerate(out) for i in ids_near(tracks, frames[f][0], 0.99)}
    ids_b = {i for f, tracks in enumerate(out) for i in ids_near(tracks, frames[f][1], 0.99)}
    assert ids_a == {1} and ids_b == {2}
    assert all(len(tracks) == 2 for tracks in out)


def test_missed_detections_keep_the_id_and_coast_on_the_prediction():
    truth = [box(40 + 8 * f, 100 + 2 * f) for f in range(25)]
    frames = [[] if f in (10, 11) else [b] for f, b in enumerate(truth)]
    out = feed(Sort(max_age=5), frames)
    assert {t.id for tracks in out for t in tracks} == {1}
    for f in (10, 11):  # reported while missed, on the constant-velocity prediction
        (t,) = out[f]
        assert not t.matched and t.time_since_update == f - 9
        assert iou_matrix(np.array([t.box]), np.array([truth[f]]))[0, 0] > 0.8
    assert out[12][0].matched and out[12][0].id == 1


@pytest.mark.parametrize("gap, same_id", [(5, True), (6, False), (9, False)])
def test_an_object_gone_longer_than_max_age_comes_back_with_a_new_id(gap, same_id):
    frames = [[box(200, 150)]] * 10 + [[]] * gap + [[box(200, 150)]] * 5
    out = feed(Sort(max_age=5, min_hits=3), frames)
    before = {t.id for tracks in out[:10] for t in tracks}
    after = {t.id for tracks in out[10 + gap:] for t in tracks}
    assert before == {1}
    assert after == ({1} if same_id else {2})
    assert all(not tracks for tracks in out[10 + 3:10 + gap])  # coast=2: nothing shown after 2 misses


def test_new_tracks_wait_for_min_hits_except_in_the_first_frames():
    a = [box(100 + 5 * f, 100) for f in range(12)]
    frames = [[a[f]] + ([box(400, 300)] if f >= 6 else []) for f in range(12)]
    out = feed(Sort(min_hits=3), frames)
    assert [len(t) for t in out[:3]] == [1, 1, 1]  # frame 1 onwards, like SORT
    assert [len(t) for t in out[6:9]] == [1, 1, 2]  # the newcomer shows on its 3rd consecutive match
    assert out[8][1].id == 2 and out[8][1].hits == 3


def test_ids_increase_and_are_never_reused():
    rng = np.random.default_rng(0)
    tracker = Sort(max_age=2)
    created: list[int] = []
    deleted: set[int] = set()
    alive_before: set[int] = set()
    for f in range(120):
        # objects on a grid blink in and out: tracks are born and die all the time
        frame = [box(60 + 120 * k, 80 + 5 * (f % 7)) for k in range(5) if rng.random() < 0.6]
        for t in tracker.update(np.array(frame, dtype=np.float32).reshape(-1, 4), np.ones(len(frame))):
            assert t.id not in deleted
        alive = {t.id for t in tracker.trackers}
        created += sorted(alive - alive_before - set(created))
        assert not alive & deleted
        deleted |= alive_before - alive
        alive_before = alive
    assert len(deleted) > 10  # the scenario really recycled tracks
    assert created == list(range(1, len(created) + 1))  # 1, 2, 3, ... in creation order, none twice


def test_empty_and_degenerate_detections():
    tracker = Sort()
    assert tracker.update(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) == []
    out = tracker.update(np.array([[10, 10, 10, 50], [0, 0, 20, 30]], np.float32), np.array([0.9, 0.8]))
    assert [t.id for t in out] == [1] and out[0].score == pytest.approx(0.8)
    with pytest.raises(ValueError):
        tracker.update(np.zeros((2, 4)), np.zeros(3))


# --- the app -------------------------------------------------------------------------------------------

DROPPED = {(12, 0), (13, 0), (25, 1)}  # (frame, face) pairs the fake detector misses


class FakeDetector:
    """Follows FaceDetector's protocol: ground-truth boxes of the frame it is called for (calls are
    counted), +-2 px deterministic jitter, and a few missed detections."""

    def __init__(self, truth: np.ndarray, dropped: set[tuple[int, int]] = DROPPED) -> None:
        self.truth = truth
        self.dropped = dropped
        self.calls = 0
        self.rng = np.random.default_rng(1234)

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        f = self.calls
        self.calls += 1
        jitter = self.rng.uniform(-2, 2, size=self.truth[f].shape).astype(np.float32)
        keep = [i for i in range(len(self.truth[f])) if (f, i) not in self.dropped]
        boxes = (self.truth[f] + jitter)[keep]
        return boxes.astype(np.float32), np.linspace(0.99, 0.9, len(keep)).astype(np.float32)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "faces.mp4"
    truth = make_face_video(path, frames=40, size=(640, 360))
    return path, truth, read_frames(path)


def face_ids(results: list[dict], truth: np.ndarray) -> list[set[int]]:
    """Per ground-truth face, the set of track IDs over the video; asserts that in every frame each face
    is covered by exactly one track and that no track covers nothing."""
    ids: list[set[int]] = [set() for _ in range(truth.shape[1])]
    for r in results:
        boxes = np.array([t["box"] for t in r["tracks"]]).reshape(-1, 4)
        iou = iou_matrix(truth[r["frame"]], boxes)
        assert ((iou > 0.5).sum(axis=1) == 1).all(), f"frame {r['frame']}: {iou}"
        assert ((iou > 0.5).sum(axis=0) == 1).all(), f"frame {r['frame']}: a track on no face"
        for face, col in enumerate(iou.argmax(axis=1)):
            ids[face].add(r["tracks"][col]["id"])
    return ids


def test_video_helper_is_deterministic_and_real(video, tmp_path):
    path, truth, frames = video
    assert len(frames) == 40 and frames[0].shape == (360, 640, 3)
    assert truth.shape == (40, 3, 4)
    heights = truth[..., 3] - truth[..., 1]
    assert heights.min() >= 90 and heights.max() <= 130
    np.testing.assert_array_equal(make_face_video(tmp_path / "again.mp4"), truth)
    # the pasted faces are where the ground truth says: the face region differs from the background
    x1, y1, x2, y2 = truth[0, 0].astype(int)
    bg = cv2.cvtColor(cv2.resize(__import__("skimage.data").data.rocket(), (640, 360)), cv2.COLOR_RGB2BGR)
    assert np.abs(frames[0][y1:y2, x1:x2].astype(int) - bg[y1:y2, x1:x2]).mean() > 40


def test_app_run_keeps_one_id_per_face(video, tmp_path):
    path, truth, frames = video
    out = tmp_path / "out.mp4"
    writer = app.LazyVideoWriter(out, fps=20)
    results = app.run(frames, FakeDetector(truth), writer=writer)
    writer.release()

    assert [r["frame"] for r in results] == list(range(40))
    ids = face_ids(results, truth)
    assert all(len(s) == 1 for s in ids) and len(set.union(*ids)) == 3, ids
    for f, face in DROPPED:  # a missed detection is bridged by the track's prediction
        (entry,) = [t for t in results[f]["tracks"] if t["id"] in ids[face]]
        assert entry["matched"] is False

    written = read_frames(out)
    assert len(written) == 40 and written[0].shape == (360, 640, 3)
    # boxes were drawn: the annotated video differs from the input along the first face's box edge
    x1, y1, x2, y2 = truth[20, 0].astype(int)
    assert np.abs(written[20][y1 - 2:y1 + 3, x1:x2].astype(int) - frames[20][y1 - 2:y1 + 3, x1:x2]).mean() > 20

    summary = app.summarize(results)
    assert summary["frames"] == 40 and summary["fps"] > 0 and summary["distinct_ids"] == 3
    assert summary["mean_detect_ms"] >= 0
    assert len(app.run(frames, FakeDetector(truth), max_frames=5)) == 5


def test_cli_processes_every_frame_of_a_file_in_order(video, tmp_path, monkeypatch, capsys):
    path, truth, frames = video
    monkeypatch.setattr(app, "open_detector", lambda paths, threads=None, min_face=20: FakeDetector(truth))
    out, js = tmp_path / "cli.mp4", tmp_path / "cli.json"
    rc = app.main(["--source", str(path), "--detector", "p.onnx", "r.onnx", "o.onnx",
                   "--output", str(out), "--json", str(js)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "every frame, in order" in printed and "fps" in printed
    data = json.loads(js.read_text())
    s = data["summary"]
    assert s["frames"] == 40 and s["fps"] > 0 and s["distinct_ids"] == 3 and s["dropped_frames"] == 0
    # the threaded file path gives exactly what the in-process loop gives: same frames, same tracks
    direct = app.run(frames, FakeDetector(truth))
    assert [r["tracks"] for r in data["frames"]] == [r["tracks"] for r in direct]
    assert len(read_frames(out)) == 40


def test_cli_reports_a_missing_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(app, "open_detector", lambda paths, threads=None, min_face=20: object())
    rc = app.main(["--source", str(tmp_path / "nope.mp4"), "--detector", "p", "r", "o"])
    assert rc == 2 and "cannot open video source" in capsys.readouterr().err


def test_latest_frame_buffer_drops_stale_frames_only_when_live():
    live = app.LatestFrame(drop=True)
    for i in range(3):
        assert live.put(np.full((2, 2), i, np.uint8))
    assert live.get()[0, 0] == 2 and live.dropped == 2
    live.close()
    assert live.get() is None and not live.put(np.zeros((2, 2), np.uint8))

    ordered = app.LatestFrame(drop=False)
    producer = threading.Thread(target=lambda: [ordered.put(np.full(1, i)) for i in range(50)] + [ordered.close()])
    producer.start()
    got = []
    while (frame := ordered.get(timeout=10)) is not None:
        got.append(int(frame[0]))
    producer.join()
    assert got == list(range(50)) and ordered.dropped == 0

    assert app.parse_source("0") == 0 and app.parse_source("clip.mp4") == "clip.mp4"
    assert app.is_live(0) and app.is_live("rtsp://cam/1") and not app.is_live("clip.mp4")


class FakePoseSession:
    """A head-pose session stand-in: records the crops it is given."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def preprocess(self, image):
        self.sizes.append(image.size)
        return np.zeros((1, 3, 224, 224), np.float32)

    def run(self, x):
        return np.zeros((1, 252), np.float32)


def test_head_pose_crops_the_whenet_box_and_reports_angles(video):
    path, truth, frames = video
    assert app.expand_box(np.array([100, 100, 200, 300]), 640, 360) == (80, 80, 220, 320)
    assert app.expand_box(np.array([-50, -50, 100, 400]), 640, 360) == (0, 0, 130, 360)
    assert app.expand_box(np.array([700, 10, 800, 50]), 640, 360) is None

    session = FakePoseSession()
    pose = app.HeadPose(session, decode=lambda logits: np.tile([[12.5, -4.0, 3.0]], (len(logits), 1)))
    results = app.run(frames[:4], FakeDetector(truth, dropped=set()), headpose=pose,
                      writer=app.LazyVideoWriter(path.parent / "pose.mp4"))
    assert all(t["pose"] == {"yaw": 12.5, "pitch": -4.0, "roll": 3.0} for r in results for t in r["tracks"])
    assert len(session.sizes) == 4 * 3
    first = results[0]["tracks"][0]["box"]
    x1, y1, x2, y2 = app.expand_box(np.array(first), 640, 360)
    assert session.sizes[0] == (x2 - x1, y2 - y1)
