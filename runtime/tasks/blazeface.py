"""BlazeFace (MediaPipe face detection, short range) decoding on the board: numpy and OpenCV, no torch.

    det = BlazeFaceDetector.from_artifact("artifacts/blazeface/rpi4/model.onnx")
    boxes, scores = det.detect(rgb)    # HxWx3 uint8 RGB -> [K, 4] x1 y1 x2 y2 pixels, [K]; best first
    det.keypoints                      # [K, 6, 2] pixels of the last call: right eye, left eye, nose
                                       # tip, mouth, right ear tragion, left ear tragion

The steps are MediaPipe's face_detection_short_range graph:
  * ImageToTensorCalculator (keep_aspect_ratio, BORDER_ZERO): the frame is scaled to fit 128x128 and
    centred on a black square (``letterbox``). MediaPipe samples with bilinear warpAffine; this
    resizes with OpenCV INTER_AREA when shrinking (less aliasing), INTER_LINEAR when growing.
  * the model's one output, [1, 896, 17]: 16 regressor values and 1 score logit per anchor
    (stages/zoo/blazeface.py documents the layout).
  * SsdAnchorsCalculator (num_layers 4, strides 8 16 16 16, 128x128, anchor_offset 0.5, aspect ratio 1
    plus the interpolated one, fixed_anchor_size): ``ssd_anchors`` -> 896 anchors.
  * TensorsToDetectionsCalculator (x/y/w/h scale 128, sigmoid score clipped to +-100, min score 0.5).
  * NonMaxSuppressionCalculator (WEIGHTED, IoU, min_suppression_threshold 0.3): every box that overlaps
    the best remaining one by IoU > 0.3 is merged into it, coordinates averaged with score weights; the
    merged detection keeps the best one's score.
  * DetectionLetterboxRemovalCalculator: back to the frame's pixels. Boxes are not clipped to the frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .face_detection import _cv2  # OpenCV, imported on first use, with the install line

INPUT_SIZE = 128
NUM_ANCHORS = 896
NUM_VALUES = 17  # 16 regressor values + 1 score logit
NUM_KEYPOINTS = 6
# MediaPipe face_detection_short_range.pbtxt, SsdAnchorsCalculatorOptions
STRIDES = (8, 16, 16, 16)
ANCHOR_OFFSET = 0.5
ANCHORS_PER_LAYER = 2  # aspect_ratios [1.0] + interpolated_scale_aspect_ratio 1.0
# TensorsToDetectionsCalculatorOptions and NonMaxSuppressionCalculatorOptions
SCALE = 128.0
SCORE_CLIP = 100.0
MIN_SCORE = 0.5
MIN_SUPPRESSION_IOU = 0.3


def ssd_anchors(input_size: int = INPUT_SIZE, strides: Sequence[int] = STRIDES, offset: float = ANCHOR_OFFSET,
                per_layer: int = ANCHORS_PER_LAYER) -> np.ndarray:
    """[896, 4] float32 anchors (x_centre, y_centre, w, h), normalized to the input square.

    SsdAnchorsCalculator with fixed_anchor_size: consecutive layers of equal stride share one
    feature map and stack their anchors per cell (stride 8: 16x16 cells x 2; stride 16: 8x8 cells
    x 6), ordered row by row, column by column, anchor by anchor, as the model's output is; every
    anchor is 1 x 1, so only its centre matters."""
    out, i = [], 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        cells = int(np.ceil(input_size / strides[i]))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres = (np.stack([xs.ravel(), ys.ravel()], 1) + offset) / cells
        out.append(np.repeat(centres, (j - i) * per_layer, axis=0))
        i = j
    centres = np.concatenate(out)
    return np.column_stack([centres, np.ones_like(centres)]).astype(np.float32)


@dataclass(frozen=True)
class Letterbox:
    """Where the frame sits in the model's square: x_square = left + x_frame * scale_x (pixels)."""
    left: int
    top: int
    scale_x: float
    scale_y: float


def letterbox(rgb: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """The frame scaled to fit size x size (aspect kept) and centred on black: (square uint8, geometry)."""
    cv2 = _cv2()
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, min(size, int(w * scale + 0.5))), max(1, min(size, int(h * scale + 0.5)))
    if (nw, nh) == (w, h):
        resized = rgb
    else:
        resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    left, top = (size - nw) // 2, (size - nh) // 2
    square = np.zeros((size, size, 3), np.uint8)
    square[top:top + nh, left:left + nw] = resized
    return square, Letterbox(left, top, nw / w, nh / h)


def decode(raw: np.ndarray, anchors: np.ndarray, min_score: float = MIN_SCORE,
           scale: float = SCALE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's [896, 17] -> (boxes [K, 4] x1 y1 x2 y2, scores [K], keypoints [K, 6, 2]) of the
    anchors scoring >= min_score, normalized to the input square, in anchor order."""
    logits = np.clip(raw[:, NUM_VALUES - 1].astype(np.float64), -SCORE_CLIP, SCORE_CLIP)  # exp(100): float64
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = np.flatnonzero(scores >= min_score)
    a = anchors[keep]
    # 8 (x, y) pairs: box centre, box size, 6 keypoints; all scale with the anchor's size and all but
    # the box size are offsets from the anchor's centre
    values = raw[keep, :NUM_VALUES - 1].reshape(-1, 8, 2) * (a[:, None, 2:4] / scale)
    values += a[:, None, 0:2]
    values[:, 1] -= a[:, 0:2]
    centre, half = values[:, 0], values[:, 1] * 0.5
    valid = (half > 0).all(axis=1)  # MediaPipe drops boxes of negative width or height
    boxes = np.concatenate([centre - half, centre + half], axis=1)[valid]
    return boxes, scores[keep][valid], values[valid, 2:]


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray,
                 threshold: float = MIN_SUPPRESSION_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-max suppression (IoU): best first, each kept detection is the
    score-weighted mean of itself and every remaining box with IoU > threshold, scored as the best.
    One vectorized pass over the remaining boxes per output detection (a few per frame)."""
    if len(boxes) == 0:
        return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                np.zeros((0, NUM_KEYPOINTS, 2), np.float32))
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    values = np.concatenate([boxes[order], keypoints[order].reshape(len(order), -1)], axis=1)
    areas = np.prod(np.maximum(values[:, 2:4] - values[:, 0:2], 0), axis=1)
    out_values, out_scores = [], []
    while len(values):
        lo = np.maximum(values[:, 0:2], values[0, 0:2])
        hi = np.minimum(values[:, 2:4], values[0, 2:4])
        inter = np.prod(np.maximum(hi - lo, 0), axis=1)
        members = inter > threshold * (areas + areas[0] - inter)  # IoU > threshold, no division
        members[0] = True  # the best box is always its own cluster (IoU 1, unless it is degenerate)
        weights = scores[members]
        out_values.append(weights @ values[members] / weights.sum())
        out_scores.append(scores[0])
        rest = ~members
        values, scores, areas = values[rest], scores[rest], areas[rest]
    merged = np.stack(out_values)
    return merged[:, :4], np.asarray(out_scores), merged[:, 4:].reshape(-1, NUM_KEYPOINTS, 2)


@dataclass
class BlazeFaceDetector:
    """BlazeFace around a runtime Session (or anything with ``.preprocess(image)`` and ``.run(x)``
    whose run returns the [1, 896, 17] output). Same interface as runtime.tasks.face_detection's
    FaceDetector: ``detect(rgb) -> (boxes, scores)``."""

    session: Any
    min_score: float = MIN_SCORE
    min_suppression_iou: float = MIN_SUPPRESSION_IOU
    input_size: int = INPUT_SIZE
    anchors: np.ndarray = field(init=False, repr=False)
    keypoints: np.ndarray = field(init=False, repr=False)  # [K, 6, 2] pixels, from the last call
    stats: dict = field(default_factory=dict)              # anchors over min_score, faces, last call

    def __post_init__(self) -> None:
        self.anchors = ssd_anchors(self.input_size)
        self.keypoints = np.zeros((0, NUM_KEYPOINTS, 2), np.float32)

    @classmethod
    def from_artifact(cls, path: str | Path, threads: int | None = None, **kw: Any) -> "BlazeFaceDetector":
        from runtime import load

        return cls(load(path, threads=threads), **kw)

    def run(self, square: np.ndarray) -> np.ndarray:
        """The model on a letterboxed input_size x input_size uint8 RGB image -> [896, 17] float32."""
        out = np.asarray(self.session.run(self.session.preprocess(square)), dtype=np.float32)
        if out.size != len(self.anchors) * NUM_VALUES:
            raise ValueError(f"BlazeFace output has shape {list(out.shape)}; expected "
                             f"[1, {len(self.anchors)}, {NUM_VALUES}] (16 regressors + 1 score logit per anchor)")
        return out.reshape(len(self.anchors), NUM_VALUES)

    def postprocess(self, raw: np.ndarray, box: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        """[896, 17] model output -> (boxes [K, 4] x1 y1 x2 y2, scores [K]) in frame pixels, best first."""
        boxes, scores, points = decode(raw, self.anchors, self.min_score, float(self.input_size))
        candidates = len(scores)
        boxes, scores, points = weighted_nms(boxes, scores, points, self.min_suppression_iou)
        offset = np.array([box.left, box.top], np.float32)
        scale = np.array([box.scale_x, box.scale_y], np.float32)
        boxes = ((boxes.reshape(-1, 2, 2) * self.input_size - offset) / scale).reshape(-1, 4)
        self.keypoints = ((points * self.input_size - offset) / scale).astype(np.float32)
        self.stats = {"candidates": candidates, "faces": len(scores)}
        return boxes.astype(np.float32), scores.astype(np.float32)

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HxWx3 uint8 RGB -> (boxes [K, 4] float32 x1 y1 x2 y2 pixels, scores [K] float32), best first."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"detect() takes an HxWx3 uint8 RGB image, got {rgb.dtype}{list(rgb.shape)}")
        square, box = letterbox(rgb, self.input_size)
        return self.postprocess(self.run(square), box)
