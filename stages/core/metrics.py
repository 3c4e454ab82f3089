"""Classification metrics against hand labels, and fidelity of an artifact to its float model."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def topk_hits(logits: np.ndarray, accepted: Sequence[set[int]], k: int) -> np.ndarray:
    top = np.argsort(-logits, axis=1)[:, :k]
    return np.array([bool(set(row.tolist()) & acc) for row, acc in zip(top, accepted)])


def classification_report(logits: np.ndarray, accepted: Sequence[set[int]]) -> dict[str, float]:
    return {"top1": 100.0 * topk_hits(logits, accepted, 1).mean(),
            "top5": 100.0 * topk_hits(logits, accepted, 5).mean()}


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, mean cosine similarity and max abs difference of the logits."""
    agree = float((reference.argmax(1) == candidate.argmax(1)).mean())
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    cos = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + 1e-12)
    return {"agreement": agree, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "max_abs_diff": float(np.abs(ref - cand).max())}
