"""MTCNN face detection on any backend: the P-Net/R-Net/O-Net cascade around three artifacts.

    det = FaceDetector.from_artifacts("mtcnn_pnet/.../model.onnx", "mtcnn_rnet/...", "mtcnn_onet/...")
    boxes, scores = det.detect(rgb)          # HxWx3 uint8 RGB -> [N, 4] x1 y1 x2 y2, [N]

The steps follow facenet-pytorch's ``detect_face`` (image pyramid, P-Net windows, NMS, box
regression, squaring, R-Net and O-Net refinement), in numpy. Each net is a callable from a batch of
uint8 RGB pixels (N x H x W x 3) to its one output, so the same cascade runs ONNX Runtime, an NPU
format or, in the build, the float PyTorch nets. NMS and resizing are OpenCV's
(``cv2.dnn.NMSBoxes``, ``INTER_AREA``): install ``opencv-python-headless`` on the board. Where
facenet-pytorch uses the intersection-over-minimum NMS after O-Net, this uses IoU (OpenCV has no other).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

Net = Callable[[np.ndarray], np.ndarray]  # uint8 pixels [N, H, W, 3] -> the net's output


@functools.cache
def _cv2():  # noqa: ANN202
    try:
        import cv2
    except ImportError:
        raise ImportError("face detection needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def session_net(session) -> Net:  # noqa: ANN001
    """A runtime Session as a Net: pixels through the manifest's normalisation and layout, one by one
    when the artifact's batch is fixed at 1 (NPU formats), all at once when it is free."""
    spec = session.inputs[0]
    pre = spec.preprocess or {}
    mean = np.asarray(pre.get("mean", (0.0, 0.0, 0.0)), np.float32)
    std = np.asarray(pre.get("std", (1.0, 1.0, 1.0)), np.float32)
    nchw = (spec.layout or "NCHW") == "NCHW"
    batch_free = not (isinstance(spec.shape[0], int) and spec.shape[0] > 0)

    def feed(pixels: np.ndarray) -> np.ndarray:
        x = pixels if spec.dtype == "uint8" else (pixels.astype(np.float32) - mean) / std
        x = np.ascontiguousarray((x.transpose(0, 3, 1, 2) if nchw else x).astype(spec.dtype))
        if batch_free or len(x) == 1:
            return np.asarray(session.run(x))
        return np.concatenate([np.asarray(session.run(x[i:i + 1])) for i in range(len(x))])

    return feed


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by OpenCV's non-maximum suppression, best score first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.column_stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    keep = _cv2().dnn.NMSBoxes(xywh.astype(np.float64).tolist(), scores.astype(np.float64).tolist(), 0.0, iou)
    return np.asarray(keep, np.int64).reshape(-1)


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square about its centre (MTCNN's ``rerec``)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the nets' box regression (offsets in units of the box's size, inclusive pixels)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * np.stack([w, h, w, h], 1)


def windows(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box cut from the image (clipped to it, 1-based as facenet-pytorch's ``pad``), resized."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    ints = np.trunc(boxes).astype(np.int64)
    x, y = np.maximum(ints[:, 0], 1), np.maximum(ints[:, 1], 1)
    ex, ey = np.minimum(ints[:, 2], w), np.minimum(ints[:, 3], h)
    crops = [cv2.resize(image[y0 - 1:y1, x0 - 1:x1], (size, size), interpolation=cv2.INTER_AREA)
             if x1 >= x0 and y1 >= y0 else np.zeros((size, size, 3), np.uint8)  # a box wholly outside
             for x0, y0, x1, y1 in zip(x, y, ex, ey)]
    return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)


@dataclass
class FaceDetector:
    pnet: Net
    rnet: Net
    onet: Net
    min_face_size: int = 20
    thresholds: Sequence[float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    stats: dict = field(default_factory=dict)  # windows per stage in the last call

    @classmethod
    def from_artifacts(cls, pnet: str | Path, rnet: str | Path, onet: str | Path, threads: int | None = None,
                       **kw: object) -> "FaceDetector":
        from runtime import load

        return cls(*(session_net(load(p, threads=threads)) for p in (pnet, rnet, onet)), **kw)  # type: ignore[arg-type]

    def scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face_size
        smallest, out = min(h, w) * m, []
        scale = m
        while smallest >= 12:
            out.append(scale)
            scale *= self.factor
            smallest *= self.factor
        return out

    def proposals(self, image: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net over the pyramid -> [N, 5] (box, score), regressed and squared."""
        cv2 = _cv2()
        h, w = image.shape[:2]
        found = []
        for scale in self.scales(h, w):
            level = cv2.resize(image, (int(w * scale + 1), int(h * scale + 1)), interpolation=cv2.INTER_AREA)
            out = self.pnet(level[None])[0]  # [6, rows, cols]
            ys, xs = np.nonzero(out[5] >= self.thresholds[0])
            if len(ys) == 0:
                continue
            cells = np.stack([xs, ys], 1).astype(np.float32)
            boxes = np.column_stack([np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale),
                                     out[5, ys, xs], out[0:4, ys, xs].T])
            found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5), np.float32)
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        w_, h_ = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        moved = boxes[:, :4] + boxes[:, 5:9] * np.stack([w_, h_, w_, h_], 1)
        return np.column_stack([square(moved), boxes[:, 4]])

    def refine(self, image: np.ndarray, boxes: np.ndarray, net: Net, size: int, threshold: float,
               regress_first: bool) -> np.ndarray:
        """Stages 2 and 3: score each window with ``net``, keep the faces, NMS and box regression
        (R-Net: NMS first; O-Net: regression first, as in facenet-pytorch)."""
        if len(boxes) == 0:
            return boxes
        out = net(windows(image, boxes[:, :4], size)).reshape(len(boxes), -1)
        keep = out[:, -1] > threshold
        boxes, reg, score = boxes[keep, :4], out[keep, 0:4], out[keep, -1]
        if regress_first:
            boxes = regress(boxes, reg)
        pick = nms(boxes, score, 0.7)
        boxes = boxes[pick] if regress_first else regress(boxes[pick], reg[pick])
        return np.column_stack([boxes, score[pick]])

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HxWx3 uint8 RGB -> (boxes [N, 4] float32 x1 y1 x2 y2, scores [N] float32), best first."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"detect() takes an HxWx3 uint8 RGB image, got {image.dtype}{list(image.shape)}")
        stage1 = self.proposals(image)
        stage2 = self.refine(image, stage1, self.rnet, 24, self.thresholds[1], regress_first=False)
        if len(stage2):
            stage2[:, :4] = square(stage2[:, :4])
        stage3 = self.refine(image, stage2, self.onet, 48, self.thresholds[2], regress_first=True)
        self.stats = {"pnet": len(stage1), "rnet": len(stage2), "onet": len(stage3)}
        order = np.argsort(-stage3[:, 4]) if len(stage3) else np.zeros(0, np.int64)
        return stage3[order, :4].astype(np.float32), stage3[order, 4].astype(np.float32)
