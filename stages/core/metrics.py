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


# ---------------------------------------------------------------- uncertainty (95 % intervals)
Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> list[float]:
    """Wilson score interval of a proportion k/n, as [low, high] fractions ([0, 1] when n is 0)."""
    if n <= 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def proportion(hits: np.ndarray) -> dict:
    """A proportion with its n and 95 % Wilson interval, in percent."""
    hits = np.asarray(hits, bool)
    k, n = int(hits.sum()), int(hits.size)
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "value": 100.0 * k / n if n else None, "ci95": [100.0 * lo, 100.0 * hi]}


def paired_difference(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Difference of two proportions measured on the same inputs (reference minus candidate, in points),
    with Newcombe's hybrid score interval for paired data (Newcombe 1998, method 10), which stays
    sensible when few or no inputs change (unlike the Wald interval, which collapses to zero width)."""
    r, c = np.asarray(reference, bool), np.asarray(candidate, bool)
    n = int(r.size)
    if n == 0:
        return {"n": 0, "value": None, "ci95": [-100.0, 100.0], "method": "Newcombe paired score interval"}
    a, b = int((r & c).sum()), int((r & ~c).sum())
    cc, d = int((~r & c).sum()), int((~r & ~c).sum())
    p1, p2 = (a + b) / n, (a + cc) / n
    l1, u1 = wilson(a + b, n)
    l2, u2 = wilson(a + cc, n)
    denominator = (a + b) * (cc + d) * (a + cc) * (b + d)
    phi = (a * d - b * cc) / np.sqrt(denominator) if denominator else 0.0
    delta = np.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    epsilon = np.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    diff = p1 - p2
    return {"n": n, "value": 100.0 * diff, "ci95": [float(100.0 * (diff - delta)), float(100.0 * (diff + epsilon))],
            "changed": {"lost": b, "gained": cc}, "method": "Newcombe paired score interval"}
