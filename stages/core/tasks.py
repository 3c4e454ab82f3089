"""How the gold check scores a model's outputs, per task (``model.task``).

Each task gives two functions:
  * ``score(outputs, accepted, ids)``: gold metrics of one set of outputs (float, rewritten or
    artifact), e.g. top-1 against hand labels; the budget's ``metric`` names one of them;
  * ``compare(reference, candidate, ids)``: fidelity of the artifact to float, always with
    ``agreement`` (share of inputs whose decision matches), ``cosine_mean`` and ``max_abs_diff``,
    and ``error`` where the task has a natural unit (head pose: degrees).
``ids`` name the gold inputs (``file|variant`` for the transformed copies a gold set adds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .metrics import classification_report, fidelity, topk_hits
from .registry import Registry


@dataclass(frozen=True)
class TaskScoring:
    score: Callable[[np.ndarray, Sequence[set[int]], Sequence[str], dict], dict[str, float]]
    compare: Callable[[np.ndarray, np.ndarray, Sequence[str], dict], dict[str, float]]
    # gold metrics the summary tables show first (report, compare, evaluate's table)
    headline: tuple[str, ...] = ("top1",)
    # per input, for each proportion metric: whether it is a hit, over that metric's own population
    # (recall: the faces; false positives: the non-faces); what the 95 % intervals are computed from
    hits: Callable[[np.ndarray, Sequence[set[int]], Sequence[str], dict], dict[str, np.ndarray]] = (
        lambda out, accepted, ids, params: {})
    # per input: whether the artifact's decision matches float's (what ``agreement`` is the mean of)
    agrees: Callable[[np.ndarray, np.ndarray, Sequence[str], dict], np.ndarray] = (
        lambda ref, cand, ids, params: ref.reshape(len(ref), -1).argmax(1) == cand.reshape(len(cand), -1).argmax(1))


TASKS: Registry[TaskScoring] = Registry("task", "model.task")


def scoring(task: Any) -> TaskScoring:
    return TASKS.get(getattr(task, "value", task))


def params_of(model: Any) -> dict:
    """A model's task knobs, plus what its gold set says about its variants."""
    return {**dict(model.task_params), "variant_degrees": model.gold.variant_degrees}


# ----------------------------------------------------------------- classification
# A fidelity set (no labels) has no top-1 to score: only its fidelity to float means something.
TASKS.register("classification")(TaskScoring(
    score=lambda out, accepted, ids, params: classification_report(out, accepted) if any(accepted) else {},
    compare=lambda ref, cand, ids, params: fidelity(ref, cand),
    headline=("top1", "top5"),
    hits=lambda out, accepted, ids, params: {"top1": topk_hits(out, accepted, 1), "top5": topk_hits(out, accepted, 5)}
    if any(accepted) else {}))


# ----------------------------------------------------------------- MTCNN stage nets
def face_probabilities(outputs: np.ndarray) -> np.ndarray:
    """[N, ..., p(not face), p(face)] (the MTCNN nets' layout here, any spatial size 1) -> [N, 2]."""
    flat = outputs.reshape(len(outputs), outputs.shape[1], -1)[:, :, 0] if outputs.ndim == 4 else outputs
    return flat[:, -2:]


def _face_score(out: np.ndarray, accepted: Sequence[set[int]], ids: Sequence[str], params: dict) -> dict:
    probs = face_probabilities(out)
    threshold = float(params.get("threshold", 0.5))
    is_face = np.array([1 in acc for acc in accepted])
    hit = probs[:, 1] >= threshold
    return {"top1": classification_report(probs, accepted)["top1"],  # face vs not at p = 0.5
            "recall": 100.0 * float(hit[is_face].mean()) if is_face.any() else 0.0,
            "false_positives": int(hit[~is_face].sum()), "negatives": int((~is_face).sum())}


def _face_compare(ref: np.ndarray, cand: np.ndarray, ids: Sequence[str], params: dict) -> dict:
    same = fidelity(ref.reshape(len(ref), -1), cand.reshape(len(cand), -1))
    threshold = float(params.get("threshold", 0.5))
    same["agreement"] = float(((face_probabilities(ref)[:, 1] >= threshold)
                               == (face_probabilities(cand)[:, 1] >= threshold)).mean())
    return same


def _face_hits(out: np.ndarray, accepted: Sequence[set[int]], ids: Sequence[str], params: dict) -> dict:
    probs = face_probabilities(out)
    is_face = np.array([1 in acc for acc in accepted])
    hit = probs[:, 1] >= float(params.get("threshold", 0.5))
    return {"top1": topk_hits(probs, accepted, 1), "recall": hit[is_face], "false_positives": hit[~is_face]}


def _face_agrees(ref: np.ndarray, cand: np.ndarray, ids: Sequence[str], params: dict) -> np.ndarray:
    threshold = float(params.get("threshold", 0.5))
    return (face_probabilities(ref)[:, 1] >= threshold) == (face_probabilities(cand)[:, 1] >= threshold)


TASKS.register("face_classification")(TaskScoring(_face_score, _face_compare,
                                                  headline=("top1", "recall", "false_positives"),
                                                  hits=_face_hits, agrees=_face_agrees))


# ----------------------------------------------------------------- single-shot face detector (BlazeFace)
def detector_scores(outputs: np.ndarray) -> np.ndarray:
    """[N, anchors, values] with the score logit last -> [N] best anchor score (MediaPipe's clipped sigmoid)."""
    logits = np.clip(outputs.reshape(len(outputs), -1, outputs.shape[-1])[..., -1].astype(np.float64), -100, 100)
    return (1.0 / (1.0 + np.exp(-logits))).max(1)


def _detector_hits(out: np.ndarray, accepted: Sequence[set[int]], ids: Sequence[str], params: dict) -> dict:
    found = detector_scores(out) >= float(params.get("threshold", 0.5))
    is_face = np.array([1 in acc for acc in accepted])
    return {"top1": found == is_face, "recall": found[is_face], "false_positives": found[~is_face]}


def _detector_score(out: np.ndarray, accepted: Sequence[set[int]], ids: Sequence[str], params: dict) -> dict:
    hits = _detector_hits(out, accepted, ids, params)
    return {"top1": 100.0 * float(hits["top1"].mean()),
            "recall": 100.0 * float(hits["recall"].mean()) if hits["recall"].size else 0.0,
            "false_positives": int(hits["false_positives"].sum()), "negatives": int(hits["false_positives"].size)}


def _detector_agrees(ref: np.ndarray, cand: np.ndarray, ids: Sequence[str], params: dict) -> np.ndarray:
    threshold = float(params.get("threshold", 0.5))
    return (detector_scores(ref) >= threshold) == (detector_scores(cand) >= threshold)


def _detector_compare(ref: np.ndarray, cand: np.ndarray, ids: Sequence[str], params: dict) -> dict:
    same = fidelity(ref.reshape(len(ref), -1), cand.reshape(len(cand), -1))
    same["agreement"] = float(_detector_agrees(ref, cand, ids, params).mean())
    return same


TASKS.register("face_detection")(TaskScoring(_detector_score, _detector_compare,
                                             headline=("recall", "false_positives", "top1"),
                                             hits=_detector_hits, agrees=_detector_agrees))


# ----------------------------------------------------------------- head pose (WHENet bins)
def _degrees(out: np.ndarray) -> np.ndarray:
    from runtime.tasks.headpose import decode

    return decode(out.reshape(len(out), -1))


def _by_variant(ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """base id -> {variant ('' for the item itself): row}."""
    groups: dict[str, dict[str, int]] = {}
    for row, ident in enumerate(ids):
        base, _, variant = ident.partition("|")
        groups.setdefault(base, {})[variant] = row
    return groups


def pose_consistency(deg: np.ndarray, ids: Sequence[str], degrees: float) -> dict[str, float]:
    """Label-free checks: a mirror flips yaw and roll (pitch stays), an in-plane turn moves roll.

    ``rotation_roll_gain`` is the roll shift per degree of turn (ideally ±1, the sign is the model's
    convention); ``mirror_*`` are mean absolute errors in degrees (ideally 0)."""
    groups = _by_variant(ids)
    mirror = [(g[""], g["mirror"]) for g in groups.values() if "" in g and "mirror" in g]
    turns = [(g[""], g[v], s) for g in groups.values() for v, s in (("rotate_cw", -1.0), ("rotate_ccw", 1.0))
             if "" in g and v in g]
    out: dict[str, float] = {}
    if mirror:
        a, b = (deg[[i for i, _ in mirror]], deg[[j for _, j in mirror]])
        out.update(mirror_yaw_mae=float(np.abs(a[:, 0] + b[:, 0]).mean()),
                   mirror_pitch_mae=float(np.abs(a[:, 1] - b[:, 1]).mean()),
                   mirror_roll_mae=float(np.abs(a[:, 2] + b[:, 2]).mean()), mirror_pairs=len(mirror))
    if turns:
        shifts = np.array([(deg[j, 2] - deg[i, 2]) / (s * degrees) for i, j, s in turns])
        out.update(rotation_roll_gain=float(shifts.mean()), rotation_roll_gain_std=float(shifts.std()),
                   rotation_pairs=len(turns))
    return out


def _pose_score(out: np.ndarray, accepted: Sequence[set[int]], ids: Sequence[str], params: dict) -> dict:
    deg = _degrees(out)
    base = [i for i, ident in enumerate(ids) if "|" not in ident]
    return {"mean_abs_yaw": float(np.abs(deg[base, 0]).mean()), "mean_abs_pitch": float(np.abs(deg[base, 1]).mean()),
            "mean_abs_roll": float(np.abs(deg[base, 2]).mean()),
            **pose_consistency(deg, ids, float(params.get("variant_degrees", 15.0)))}


def _pose_compare(ref: np.ndarray, cand: np.ndarray, ids: Sequence[str], params: dict) -> dict:
    a, b = _degrees(ref), _degrees(cand)
    err = np.abs(a - b)
    within = float(params.get("agree_within_deg", 5.0))
    same = fidelity(ref.reshape(len(ref), -1), cand.reshape(len(cand), -1))
    return {"agreement": float((err.max(1) <= within).mean()), "agree_within_deg": within,
            "error": float(err.mean()), "yaw_mae": float(err[:, 0].mean()), "pitch_mae": float(err[:, 1].mean()),
            "roll_mae": float(err[:, 2].mean()), "max_error_deg": float(err.max()),
            "cosine_mean": same["cosine_mean"], "cosine_min": same["cosine_min"], "max_abs_diff": same["max_abs_diff"]}


def _pose_agrees(ref: np.ndarray, cand: np.ndarray, ids: Sequence[str], params: dict) -> np.ndarray:
    return np.abs(_degrees(ref) - _degrees(cand)).max(1) <= float(params.get("agree_within_deg", 5.0))


TASKS.register("head_pose")(TaskScoring(_pose_score, _pose_compare,
                                        headline=("mirror_yaw_mae", "mirror_roll_mae", "rotation_roll_gain"),
                                        agrees=_pose_agrees))


def intervals(task: TaskScoring, reference: np.ndarray, candidate: np.ndarray, accepted: Sequence[set[int]],
              ids: Sequence[str], params: dict, budget_metric: str | None) -> dict:
    """Every proportion behind a verdict with its n and 95 % interval: each gold metric of float and of
    the artifact (Wilson), the agreement (Wilson), and the budgeted metric's drop, float minus artifact
    on the same inputs (Newcombe's paired interval)."""
    from .metrics import paired_difference, proportion

    ref_hits, cand_hits = task.hits(reference, accepted, ids, params), task.hits(candidate, accepted, ids, params)
    out: dict = {"float": {k: proportion(v) for k, v in ref_hits.items()},
                 "artifact": {k: proportion(v) for k, v in cand_hits.items()},
                 "agreement": proportion(task.agrees(reference, candidate, ids, params))}
    if budget_metric in ref_hits:
        out["drop"] = {"metric": budget_metric, **paired_difference(ref_hits[budget_metric], cand_hits[budget_metric])}
    return out
