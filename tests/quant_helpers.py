"""Helpers shared by the quant-scheme tests: run an ONNX graph on one input, compare logits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
