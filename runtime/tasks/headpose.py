"""Head-pose decoding for WHENet-style bin classifiers (numpy only: this runs on the board).

The model emits one [N, 252] tensor: yaw logits (120 bins), then pitch (66), then roll (66), each
bin 3 degrees wide. An angle is the softmax expectation over bin indices, times 3, plus the head's
offset -- the regression-by-classification decode WHENet was trained for, which gives sub-bin
resolution that an argmax would lose.
"""
from __future__ import annotations

import numpy as np

BIN_WIDTH = 3.0  # degrees per bin, all three heads
# head -> (number of bins, degrees of bin 0's index); order is the order in the logits tensor.
BINS: dict[str, tuple[int, float]] = {"yaw": (120, -180.0), "pitch": (66, -99.0), "roll": (66, -99.0)}
NUM_LOGITS = sum(n for n, _ in BINS.values())  # 252


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax that cannot overflow: subtract the row max before exp."""
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


def split(logits: np.ndarray) -> dict[str, np.ndarray]:
    """[N, 252] -> {"yaw": [N, 120], "pitch": [N, 66], "roll": [N, 66]}."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != NUM_LOGITS:
        raise ValueError(f"expected logits of shape [N, {NUM_LOGITS}], got {list(logits.shape)}")
    out, start = {}, 0
    for name, (n, _) in BINS.items():
        out[name] = logits[:, start:start + n]
        start += n
    return out


def decode(logits: np.ndarray) -> np.ndarray:
    """[N, 252] raw logits -> [N, 3] float64 degrees (yaw, pitch, roll)."""
    heads = split(np.asarray(logits, dtype=np.float64))
    cols = []
    for name, (n, offset) in BINS.items():
        cols.append(softmax(heads[name]) @ np.arange(n, dtype=np.float64) * BIN_WIDTH + offset)
    return np.stack(cols, axis=1)
