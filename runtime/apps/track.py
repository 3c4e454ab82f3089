"""python -m runtime.apps.track: detect and track faces (and optionally their head pose) in a video or camera.

    python -m runtime.apps.track --source clip.mp4 --detector blazeface/model.onnx \\   # or: pnet rnet onet
        [--headpose whenet.onnx] [--output out.mp4] [--json results.json] [--max-frames N]

Two threads: a capture thread reads frames with OpenCV into a one-slot "latest frame" buffer, and the
main thread (the inference thread) takes frames from it, detects faces, updates a SORT tracker, runs
head pose per tracked face, draws, and writes the output video.

Frame dropping depends on the source, and --realtime/--no-realtime overrides it:
  * a camera (an integer index such as 0) or a stream URL is live: the capture thread overwrites the
    slot, so inference always gets the newest frame and stale ones are dropped (counted in the summary);
  * a video file is not: the capture thread waits until the slot is taken, so every frame is processed
    in order and results are deterministic (the same file gives the same JSON, whatever the speed).
"""
from __future__ import annotations

import argparse
import colorsys
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import cv2
import numpy as np
from PIL import Image

from ..__main__ import positive
from ..errors import UserError, exit_code
from ..tracking import Sort, Track


class Detector(Protocol):
    """What the app needs from a face detector (runtime.tasks.face_detection.FaceDetector has it)."""

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HxWx3 uint8 RGB -> (boxes float32 [N,4] x1,y1,x2,y2 pixels, scores float32 [N])."""
        ...


# --- capture -------------------------------------------------------------------------------------------

class LatestFrame:
    """A one-slot buffer between the capture thread and the inference thread.

    drop=True (live sources): put() overwrites an untaken frame, so get() always returns the newest and
    latency never builds up; `dropped` counts the overwritten frames.
    drop=False (files): put() blocks until the previous frame was taken, so nothing is lost.
    close() (from either side) ends the exchange: pending get()s return what is left, then None."""

    def __init__(self, drop: bool) -> None:
        self.drop = drop
        self.dropped = 0
        self._frame: np.ndarray | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, frame: np.ndarray) -> bool:
        """Offer a frame; False once closed (the producer should stop)."""
        with self._cond:
            if not self.drop:
                self._cond.wait_for(lambda: self._frame is None or self._closed)
            if self._closed:
                return False
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> np.ndarray | None:
        """Take the latest frame, waiting for one; None when closed and empty (or on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def parse_source(source: str) -> int | str:
    """'0' -> camera index 0; anything else is a path or URL for cv2.VideoCapture."""
    return int(source) if source.strip().isdigit() else source


def is_live(source: int | str) -> bool:
    """Cameras and stream URLs are live (drop stale frames); files are not (process every frame)."""
    return isinstance(source, int) or "://" in str(source)


class FrameSource:
    """Frames from cv2.VideoCapture, read on a capture thread into a LatestFrame buffer.

    Iterate it to get BGR frames (as OpenCV delivers them); stop iterating whenever you like, then close()
    (or use it as a context manager) to stop the thread and release the device."""

    def __init__(self, source: int | str, realtime: bool | None = None) -> None:
        self.source = source
        self.realtime = is_live(source) if realtime is None else realtime
        self.capture = cv2.VideoCapture(source)
        if not self.capture.isOpened():
            raise OSError(f"cannot open video source {source!r}")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 25.0
        self.buffer = LatestFrame(drop=self.realtime)
        self.read = 0  # frames read from the source
        self._thread = threading.Thread(target=self._capture, name="capture", daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        try:
            while True:
                ok, frame = self.capture.read()
                if not ok or not self.buffer.put(frame):
                    break
                self.read += 1
        finally:
            self.buffer.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            frame = self.buffer.get()
            if frame is None:
                return
            yield frame

    @property
    def dropped(self) -> int:
        return self.buffer.dropped

    def close(self) -> None:
        self.buffer.close()
        self._thread.join(timeout=5.0)
        self.capture.release()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LazyVideoWriter:
    """cv2.VideoWriter (mp4v) opened on the first frame, when the frame size is known."""

    def __init__(self, path: str | Path, fps: float = 25.0, fourcc: str = "mp4v") -> None:
        self.path = Path(path)
        self.fps = fps
        self.fourcc = fourcc
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            h, w = frame.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self._writer.isOpened():
                raise OSError(f"cannot open a {self.fourcc} video writer for {self.path}")
        self._writer.write(frame)
        self.frames += 1

    def release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


# --- head pose -----------------------------------------------------------------------------------------

def expand_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The crop head pose sees (the WHENet convention): the face box widened by 1/5 of its width on each
    side and heightened by 1/10 of its height on each side, clipped to the image. None if empty."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    x1, x2 = max(0, int(round(x1 - w / 5))), min(width, int(round(x2 + w / 5)))
    y1, y2 = max(0, int(round(y1 - h / 10))), min(height, int(round(y2 + h / 10)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return x1, y1, x2, y2


class HeadPose:
    """Head pose per face: crop (expand_box), the artifact's own preprocessing, run, decode to degrees."""

    def __init__(self, session: Any, decode: Callable[[np.ndarray], np.ndarray]) -> None:
        self.session = session
        self.decode = decode

    @classmethod
    def from_artifact(cls, path: str | Path, threads: int | None = None) -> "HeadPose":
        from .. import load
        from ..tasks.headpose import decode  # imported here: the app runs without head pose too

        return cls(load(path, threads=threads), decode)

    def estimate(self, rgb: np.ndarray, box: np.ndarray) -> tuple[float, float, float] | None:
        """(yaw, pitch, roll) degrees for the face in box, or None when the box is outside the image."""
        crop_box = expand_box(box, rgb.shape[1], rgb.shape[0])
        if crop_box is None:
            return None
        x1, y1, x2, y2 = crop_box
        x = self.session.preprocess(Image.fromarray(np.ascontiguousarray(rgb[y1:y2, x1:x2])))
        yaw, pitch, roll = (float(v) for v in np.asarray(self.decode(self.session.run(x))).reshape(-1, 3)[0])
        return yaw, pitch, roll


# --- drawing -------------------------------------------------------------------------------------------

def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per ID (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(255 * b), int(255 * g), int(255 * r)


def draw_axes(img: np.ndarray, yaw: float, pitch: float, roll: float, cx: float, cy: float, size: float) -> None:
    """Head-pose axes at (cx, cy), as the Hopenet/WHENet demos draw them: x red, y green, z (facing) blue."""
    p, y, r = np.radians(pitch), -np.radians(yaw), np.radians(roll)
    ends = (
        (size * np.cos(y) * np.cos(r), size * (np.cos(p) * np.sin(r) + np.cos(r) * np.sin(p) * np.sin(y)), (0, 0, 255)),
        (-size * np.cos(y) * np.sin(r), size * (np.cos(p) * np.cos(r) - np.sin(p) * np.sin(y) * np.sin(r)), (0, 255, 0)),
        (size * np.sin(y), -size * np.cos(y) * np.sin(p), (255, 0, 0)),
    )
    for dx, dy, color in ends:
        cv2.line(img, (int(cx), int(cy)), (int(cx + dx), int(cy + dy)), color, 2, cv2.LINE_AA)


def draw(img: np.ndarray, tracks: list[Track], poses: dict[int, tuple[float, float, float]] | None = None) -> np.ndarray:
    """Boxes, IDs and (if any) pose text and axes, drawn in place on a BGR image. Coasting tracks (no
    detection this frame, box predicted) are drawn thin."""
    poses = poses or {}
    for t in tracks:
        x1, y1, x2, y2 = (int(round(v)) for v in t.box)
        color = track_color(t.id)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, 2 if t.matched else 1)
        label = f"#{t.id} {t.score:.2f}"
        cv2.putText(img, label, (x1, max(12, y1 - 5)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
        pose = poses.get(t.id)
        if pose is not None:
            yaw, pitch, roll = pose
            draw_axes(img, yaw, pitch, roll, (x1 + x2) / 2, (y1 + y2) / 2, 0.5 * (x2 - x1))
            cv2.putText(img, f"y{yaw:+.0f} p{pitch:+.0f} r{roll:+.0f}", (x1, min(img.shape[0] - 4, y2 + 14)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return img


# --- the loop ------------------------------------------------------------------------------------------

PARTS = ("detect", "track", "pose", "draw")  # where a frame's time goes (detect includes colour conversion)

def run(frames: Iterable[np.ndarray], detector: Detector, headpose: HeadPose | None = None,
        writer: Any = None, tracker: Sort | None = None, max_frames: int | None = None,
        log: Callable[[str], None] | None = None, log_every_s: float = 5.0) -> list[dict]:
    """Detect, track, estimate pose, draw and write, frame by frame (no threads here; the caller's iterable
    may be a FrameSource). frames: BGR uint8 images as OpenCV reads them. writer: anything with
    write(bgr) (cv2.VideoWriter, LazyVideoWriter) or None to skip drawing. Returns one dict per frame:
    {"frame", "detect_ms", "frame_ms", "tracks": [{"id", "box", "score", "matched", "pose"?}]}."""
    tracker = tracker or Sort()
    results: list[dict] = []
    try:
        _loop(frames, detector, headpose, writer, tracker, max_frames, log, log_every_s, results)
    except KeyboardInterrupt:  # Ctrl-C is how a camera run ends: keep what was processed
        if log is not None:
            log("interrupted")
    return results


def _loop(frames: Iterable[np.ndarray], detector: Detector, headpose: HeadPose | None, writer: Any,
          tracker: Sort, max_frames: int | None, log: Callable[[str], None] | None, log_every_s: float,
          results: list[dict]) -> None:
    start = last_log = time.perf_counter()
    for index, bgr in enumerate(frames):
        if max_frames is not None and index >= max_frames:
            break
        t0 = time.perf_counter()
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        boxes, scores = detector.detect(rgb)
        t1 = time.perf_counter()
        tracks = tracker.update(np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                                np.asarray(scores, dtype=np.float32).reshape(-1))
        t_track = time.perf_counter()
        poses: dict[int, tuple[float, float, float]] = {}
        if headpose is not None:
            for t in tracks:
                pose = headpose.estimate(rgb, t.box)
                if pose is not None:
                    poses[t.id] = pose
        t_pose = time.perf_counter()
        if writer is not None:
            writer.write(draw(bgr.copy(), tracks, poses))
        t2 = time.perf_counter()
        entries = []
        for t in tracks:
            entry: dict[str, Any] = {"id": t.id, "box": [round(float(v), 2) for v in t.box],
                                     "score": round(float(t.score), 4), "matched": t.matched}
            if t.id in poses:
                entry["pose"] = dict(zip(("yaw", "pitch", "roll"), (round(v, 2) for v in poses[t.id])))
            entries.append(entry)
        results.append({"frame": index, "detect_ms": round(1e3 * (t1 - t0), 3), "frame_ms": round(1e3 * (t2 - t0), 3),
                        "parts_ms": {part: round(1e3 * dt, 3) for part, dt in
                                     zip(PARTS, (t1 - t0, t_track - t1, t_pose - t_track, t2 - t_pose))},
                        "tracks": entries})
        if log is not None and t2 - last_log >= log_every_s:
            last_log = t2
            log(f"frame {index + 1}: {(index + 1) / (t2 - start):.1f} fps, "
                f"detect {np.mean([r['detect_ms'] for r in results[-50:]]):.1f} ms/frame")


def summarize(results: list[dict], wall_s: float | None = None, dropped: int = 0) -> dict:
    """frames, fps (processed frames per wall-clock second; without wall_s, per second of processing),
    mean detect ms, distinct track IDs."""
    n = len(results)
    busy_s = sum(r["frame_ms"] for r in results) / 1e3
    seconds = wall_s if wall_s is not None else busy_s
    return {
        "frames": n,
        "fps": n / seconds if seconds > 0 else 0.0,
        "mean_detect_ms": float(np.mean([r["detect_ms"] for r in results])) if n else 0.0,
        "mean_frame_ms": 1e3 * busy_s / n if n else 0.0,
        # where a frame's time goes: detection (colour conversion included), tracking, head pose, drawing
        "mean_parts_ms": {part: float(np.mean([r["parts_ms"][part] for r in results])) for part in PARTS} if n else {},
        "distinct_ids": len({t["id"] for r in results for t in r["tracks"]}),
        "dropped_frames": dropped,
    }


def open_detector(paths: list[str], threads: int | None = None, min_face: int = 20) -> Detector:
    """Either detector family, by the number of artifacts: one single-shot detector (BlazeFace), or the
    MTCNN cascade's three nets (P-, R-, O-Net). Imported here so the rest of the app, and its tests,
    do not need them."""
    if len(paths) == 1:
        from ..tasks.blazeface import BlazeFaceDetector

        return BlazeFaceDetector.from_artifact(paths[0], threads=threads)
    if len(paths) == 3:
        from ..tasks.face_detection import FaceDetector

        return FaceDetector.from_artifacts(*paths, threads=threads, min_face_size=min_face)
    raise ValueError(f"--detector takes one artifact (BlazeFace) or three (MTCNN P-, R-, O-Net), got {len(paths)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.apps.track", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="a video file, a stream URL, or a camera index (0)")
    parser.add_argument("--detector", nargs="+", required=True, metavar="ARTIFACT",
                        help="BlazeFace: its one artifact; MTCNN: the P-, R- and O-Net artifacts (manifests beside them)")
    parser.add_argument("--min-face", type=positive, default=20,
                        help="smallest face to find, pixels (larger: fewer pyramid levels, faster)")
    parser.add_argument("--headpose", help="a head-pose artifact (WHENet-style, 252 logits)")
    parser.add_argument("--output", help="write the annotated video here (mp4v)")
    parser.add_argument("--json", help="write per-frame tracks and a summary here")
    parser.add_argument("--max-frames", type=positive, default=None, help="stop after this many processed frames")
    rt = parser.add_mutually_exclusive_group()
    rt.add_argument("--realtime", dest="realtime", action="store_true", default=None,
                    help="drop stale frames (default for cameras and URLs)")
    rt.add_argument("--no-realtime", dest="realtime", action="store_false",
                    help="process every frame in order (default for files)")
    parser.add_argument("--threads", type=positive, default=None, help="intra-op threads per model (default: manifest)")
    parser.add_argument("--max-age", type=int, default=5, help="frames a lost track is kept")
    parser.add_argument("--min-hits", type=int, default=3, help="matches before a new track is shown")
    parser.add_argument("--iou", type=float, default=0.3, help="least IoU to match a detection to a track")
    parser.add_argument("--log-every", type=float, default=5.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    return exit_code(lambda: track(args), "python -m runtime.apps.track")


def track(args: argparse.Namespace) -> int:
    try:
        detector = open_detector(args.detector, threads=args.threads, min_face=args.min_face)
        headpose = HeadPose.from_artifact(args.headpose, threads=args.threads) if args.headpose else None
        source = FrameSource(parse_source(args.source), realtime=args.realtime)
    except (OSError, ImportError, ValueError) as exc:  # a source that does not open, OpenCV missing, a bad count
        if isinstance(exc, UserError):
            raise
        raise UserError(str(exc)) from exc
    writer = LazyVideoWriter(args.output, fps=source.fps) if args.output else None
    mode = "realtime (drops stale frames)" if source.realtime else "every frame, in order"
    print(f"source {args.source}: {mode}", flush=True)
    start = time.perf_counter()
    try:
        results = run(source, detector, headpose, writer,
                      tracker=Sort(max_age=args.max_age, min_hits=args.min_hits, iou_threshold=args.iou),
                      max_frames=args.max_frames, log=lambda line: print(line, flush=True),
                      log_every_s=args.log_every)
    finally:
        wall_s = time.perf_counter() - start
        source.close()
        if writer is not None:
            writer.release()
    summary = summarize(results, wall_s, dropped=source.dropped)
    print(f"{summary['frames']} frames in {wall_s:.2f} s: {summary['fps']:.1f} fps, "
          f"detect {summary['mean_detect_ms']:.1f} ms/frame, {summary['distinct_ids']} track IDs"
          + (f", {summary['dropped_frames']} stale frames dropped" if source.realtime else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"source": args.source, "summary": summary, "frames": results},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
