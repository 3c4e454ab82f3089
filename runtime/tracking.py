"""SORT-style multi-object tracking: a constant-velocity Kalman filter per track, Hungarian matching on IoU.

After Bewley et al., "Simple Online and Realtime Tracking" (2016). Plain numpy + scipy, no filterpy, so a
board needs nothing beyond what the runtime already installs for the apps. The per-frame cost is a few
7x7 matrix products per track and one small assignment problem, negligible next to a detector.

    tracker = Sort(max_age=5, min_hits=3, iou_threshold=0.3)
    for boxes, scores in detections:          # boxes [N,4] x1,y1,x2,y2 pixels, scores [N]
        for t in tracker.update(boxes, scores):
            print(t.id, t.box, t.score)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["Sort", "Track", "KalmanBoxTracker", "iou_matrix", "associate"]


def box_to_z(box: np.ndarray) -> np.ndarray:
    """x1,y1,x2,y2 -> the measurement (cx, cy, s=area, r=w/h): area and aspect change independently,
    and a constant aspect is a better prior for a face than constant width and height."""
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] + w / 2.0, box[1] + h / 2.0, w * h, w / h], dtype=np.float64)


def x_to_box(x: np.ndarray) -> np.ndarray:
    """State (cx, cy, s, r, ...) -> x1,y1,x2,y2. NaN when the area has gone non-positive."""
    s, r = x[2], x[3]
    if s <= 0 or r <= 0:
        return np.full(4, np.nan)
    w = np.sqrt(s * r)
    h = s / w
    return np.array([x[0] - w / 2.0, x[1] - h / 2.0, x[0] + w / 2.0, x[1] + h / 2.0])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [N,4] and b [M,4] -> [N,M]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def associate(dets: np.ndarray, preds: np.ndarray, iou_threshold: float = 0.3
              ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Match detections to predicted track boxes: Hungarian assignment maximising total IoU, then drop
    pairs under the threshold (an optimal assignment can still pair two boxes that barely touch).
    Returns (matches [(det, track)], unmatched detections, unmatched tracks)."""
    n, m = len(dets), len(preds)
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    iou = iou_matrix(dets, preds)
    rows, cols = linear_sum_assignment(-iou)
    matches = [(int(d), int(t)) for d, t in zip(rows, cols) if iou[d, t] >= iou_threshold]
    matched_d = {d for d, _ in matches}
    matched_t = {t for _, t in matches}
    return (matches, [d for d in range(n) if d not in matched_d], [t for t in range(m) if t not in matched_t])


class KalmanBoxTracker:
    """One object's Kalman filter. State (cx, cy, s, r, vcx, vcy, vs): constant velocity on position and
    area, aspect ratio constant. Noise settings are SORT's: the measurement trusts position more than
    area/aspect, and unobserved velocities start very uncertain so the first matches set them."""

    F = np.eye(7)
    F[0, 4] = F[1, 5] = F[2, 6] = 1.0
    H = np.eye(4, 7)
    R = np.diag([1.0, 1.0, 10.0, 10.0])
    Q = np.diag([1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 0.0001])

    def __init__(self, box: np.ndarray, score: float, track_id: int) -> None:
        self.id = track_id
        self.x = np.zeros(7)
        self.x[:4] = box_to_z(box)
        self.P = np.diag([10.0, 10.0, 10.0, 10.0, 1e4, 1e4, 1e4])
        self.box = np.asarray(box, dtype=np.float64).copy()  # last reported box
        self.score = float(score)
        self.hits = 1               # matched detections in total
        self.hit_streak = 1         # consecutive frames matched
        self.age = 0                # frames since creation
        self.time_since_update = 0  # frames since the last match
        self.confirmed = False      # reached min_hits consecutive matches once; stays so

    def predict(self) -> np.ndarray:
        """Advance one frame; returns the predicted box."""
        if self.x[2] + self.x[6] <= 0:  # area would go negative: stop shrinking
            self.x[6] = 0.0
        self.x = self.F @ self.x
        self.P = self.F @ self.P @ self.F.T + self.Q
        self.age += 1
        if self.time_since_update > 0:
            self.hit_streak = 0
        self.time_since_update += 1
        self.box = x_to_box(self.x)
        return self.box

    def update(self, box: np.ndarray, score: float) -> None:
        """Correct with a matched detection; the reported box is the detection itself (not the filtered
        state), which is what a viewer expects to see around the face."""
        z = box_to_z(box)
        y = z - self.H @ self.x
        S = self.H @ self.P @ self.H.T + self.R
        K = np.linalg.solve(S, self.H @ self.P).T  # P H^T S^-1 (S and P symmetric)
        self.x = self.x + K @ y
        self.P = (np.eye(7) - K @ self.H) @ self.P
        self.box = np.asarray(box, dtype=np.float64).copy()
        self.score = float(score)
        self.hits += 1
        self.hit_streak += 1
        self.time_since_update = 0


@dataclass(frozen=True)
class Track:
    """A snapshot of one track after an update (safe to keep; later updates do not change it)."""
    id: int
    box: np.ndarray             # x1,y1,x2,y2 float32: the detection if matched this frame, else the prediction
    score: float                # the last matched detection's score
    hits: int                   # matched detections in total
    age: int                    # frames since the track was created
    time_since_update: int      # 0 = matched this frame

    @property
    def matched(self) -> bool:
        return self.time_since_update == 0


class Sort:
    """SORT tracker.

    max_age: frames a track survives without a match before it is deleted (its ID is then never reused).
    min_hits: consecutive matches before a new track is reported; during the first min_hits frames every
        track is reported (as in SORT), so a video's first frames are not blank.
    iou_threshold: the least IoU between a detection and a prediction to count as a match.
    coast: a confirmed track missed for up to this many frames is still reported, with its predicted box,
        so one missed detection does not make a box blink; 0 reports matched tracks only (strict SORT).
    """

    def __init__(self, max_age: int = 5, min_hits: int = 3, iou_threshold: float = 0.3, coast: int = 2) -> None:
        self.max_age = max_age
        self.min_hits = min_hits
        self.iou_threshold = iou_threshold
        self.coast = coast
        self.trackers: list[KalmanBoxTracker] = []
        self.frame_count = 0
        self._next_id = 1  # per tracker instance, so two trackers (or two tests) never share a counter

    def update(self, boxes: np.ndarray, scores: np.ndarray | None = None) -> list[Track]:
        """One frame's detections in (boxes [N,4], scores [N]; N may be 0), the reported tracks out.
        Call it every frame, with empty arrays when nothing was detected, so tracks age correctly."""
        self.frame_count += 1
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & np.isfinite(boxes).all(axis=1)
        boxes, scores = boxes[ok], scores[ok]

        preds = np.array([t.predict() for t in self.trackers]).reshape(-1, 4)
        alive = np.isfinite(preds).all(axis=1)
        self.trackers = [t for t, a in zip(self.trackers, alive) if a]
        preds = preds[alive]

        matches, new_dets, _ = associate(boxes, preds, self.iou_threshold)
        for d, t in matches:
            self.trackers[t].update(boxes[d], scores[d])
        for d in new_dets:
            self.trackers.append(KalmanBoxTracker(boxes[d], scores[d], self._next_id))
            self._next_id += 1

        out: list[Track] = []
        early = self.frame_count <= self.min_hits
        for t in self.trackers:
            if t.hit_streak >= self.min_hits:
                t.confirmed = True
            if (t.confirmed or (early and t.time_since_update == 0)) and t.time_since_update <= self.coast:
                out.append(Track(t.id, t.box.astype(np.float32), t.score, t.hits, t.age, t.time_since_update))
        self.trackers = [t for t in self.trackers if t.time_since_update <= self.max_age]
        return sorted(out, key=lambda tr: tr.id)
