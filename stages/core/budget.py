"""The accuracy budget: one rule for every stage that asks "does this artifact hold its budget?".

quantize's repair asks it on the validation split, evaluate's verdict on the gold set. A budget lives
on the model (``model.budget``): it says what the model's users need, so it is the same on every
target. Each bound that is set is one *quantity* with its n and 95 % interval:

  drop               points of the budget's metric lost against float (labelled sets; paired interval)
  agreement          share of inputs whose decision matches float (Wilson)
  confident_agreement   the same, over the inputs where float's top-1 probability >= ``confidence``
  top1_in_top5       share of inputs where float's top-1 is inside the artifact's top-5 (Wilson)
  cosine             mean cosine of the outputs against float (normal interval of the mean)
  error              the task's error against float, in its unit (head pose: degrees)

The verdict needs two things: every value within its bound, and a gold set that resolves each bound:
the interval's half-width no wider than the room the bound leaves, or the interval wholly on one side of
the bound (``decided``). A paired drop's interval widens with the inputs on which the artifact and float
disagree, whichever way: an artifact that gains 12 inputs and loses 3 has a wide interval that lies
wholly below the bound, which decides it as surely as a narrow one. A set too small for its budget is a
configuration error, named at compose time (``required_inputs``), never a PASS.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .config import BudgetConfig
from .errors import BuildError
from .metrics import Z95, paired_difference, wilson

FRACTIONS = {"agreement": "min_agreement", "confident_agreement": "min_confident_agreement",
             "top1_in_top5": "min_top1_in_top5"}
CLASSIFIER_ONLY = ("min_confident_agreement", "min_top1_in_top5")


def _share(hits: np.ndarray) -> dict:
    hits = np.asarray(hits, bool)
    k, n = int(hits.sum()), int(hits.size)
    return {"value": k / n if n else None, "n": n, "k": k, "ci95": wilson(k, n)}


def _mean(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    n = int(values.size)
    mean = float(values.mean()) if n else None
    half = float(Z95 * values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return {"value": mean, "n": n, "ci95": [mean - half, mean + half] if n else [None, None]}


def per_input_cosine(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    return (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + 1e-12)


def classifier_views(reference: np.ndarray, candidate: np.ndarray, confidence: float) -> dict[str, np.ndarray]:
    """Per input: whether float is confident, the top-1s agree, and float's top-1 is in the artifact's top-5."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1)
    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top1 = ref.argmax(1)
    top5 = np.argsort(-cand, axis=1)[:, :5]
    return {"confident": p.max(1) >= confidence, "agree": top1 == cand.argmax(1),
            "top1_in_top5": (top5 == top1[:, None]).any(1)}


def measure(budget: BudgetConfig, task: Any, reference: np.ndarray, candidate: np.ndarray,
            accepted: Sequence[set[int]], ids: Sequence[str], params: dict) -> dict[str, dict]:
    """Every quantity the budget bounds (and agreement and cosine always), each with value, n and ci95."""
    out: dict[str, dict] = {"agreement": _share(task.agrees(reference, candidate, ids, params)),
                            "cosine": _mean(per_input_cosine(reference, candidate))}
    if budget.metric and any(accepted):
        ref_m = task.score(reference, accepted, ids, params)[budget.metric]
        cand_m = task.score(candidate, accepted, ids, params)[budget.metric]
        drop: dict = {"value": float(ref_m - cand_m), "metric": budget.metric}
        hits_ref, hits_cand = task.hits(reference, accepted, ids, params), task.hits(candidate, accepted, ids, params)
        if budget.metric in hits_ref:
            paired = paired_difference(hits_ref[budget.metric], hits_cand[budget.metric])
            drop.update(n=paired["n"], ci95=paired["ci95"])
        else:
            drop.update(n=len(reference), ci95=None)
        out["drop"] = drop
    if budget.min_confident_agreement is not None or budget.min_top1_in_top5 is not None:
        views = classifier_views(reference, candidate, budget.confidence)
        out["confident_agreement"] = {**_share(views["agree"][views["confident"]]), "confidence": budget.confidence}
        out["top1_in_top5"] = _share(views["top1_in_top5"])
    if budget.max_error is not None:
        error = task.compare(reference, candidate, ids, params).get("error")
        out["error"] = {"value": error, "n": len(reference), "ci95": None}
    return out


def _bounds(budget: BudgetConfig) -> list[tuple[str, str, float, float]]:
    """(quantity, 'min' or 'max', bound, the room the bound leaves a perfect artifact) for each bound set."""
    rows = []
    if budget.metric:
        rows.append(("drop", "max", budget.max_drop, budget.max_drop / 100.0))
    for quantity, key in FRACTIONS.items():
        bound = getattr(budget, key)
        if bound is not None:
            rows.append((quantity, "min", bound, 1.0 - bound))
    if budget.min_cosine is not None:
        rows.append(("cosine", "min", budget.min_cosine, 1.0 - budget.min_cosine))
    if budget.max_error is not None:
        rows.append(("error", "max", budget.max_error, budget.max_error))
    return rows


def decided(kind: str, bound: float, lo: float, hi: float) -> bool:
    """Whether a 95 % interval lies wholly on one side of its bound (drop in points, as the bound): then the
    set has decided the bound, however wide the interval; only one that straddles it is undecided."""
    return (hi <= bound or lo > bound) if kind == "max" else (lo >= bound or hi < bound)


def failures(budget: BudgetConfig, quantities: dict[str, dict], resolve: bool = True) -> list[str]:
    """Every way the measured quantities miss the budget (empty: it holds). With ``resolve``, also every
    bound that the set is too small to resolve: a PASS needs both."""
    missed = []
    for quantity, kind, bound, room in _bounds(budget):
        q = quantities.get(quantity)
        if q is None or q.get("value") is None:
            if quantity != "drop":  # an unlabelled (fidelity) set has no drop to bound
                missed.append(f"{quantity}: not measured on this set (n = 0)")
            continue
        value = q["value"]
        if (kind == "max" and value > bound) or (kind == "min" and value < bound):
            shown = f"{value:.2f} > max_drop {bound}" if quantity == "drop" else (
                f"{value:.3f} {'>' if kind == 'max' else '<'} {bound}")
            missed.append(f"{quantity} {shown}" + (f" (n = {q['n']})" if q.get("n") is not None else ""))
        if resolve and room > 0 and q.get("ci95") and None not in q["ci95"]:
            lo, hi = q["ci95"]
            half = (hi - lo) / 2 / (100.0 if quantity == "drop" else 1.0)
            if half > room and not decided(kind, bound, lo, hi):
                missed.append(f"{quantity}: n = {q['n']} cannot resolve the bound {bound} (95 % interval half-width "
                              f"{half * (100 if quantity == 'drop' else 1):.3g} > {room * (100 if quantity == 'drop' else 1):.3g})")
    return missed


def resolves(budget: BudgetConfig, quantities: dict[str, dict]) -> bool:
    """Whether these quantities' intervals are narrow enough to decide every bound of the budget."""
    return failures(budget, quantities, resolve=True) == failures(budget, quantities, resolve=False)


def verdict(budget: BudgetConfig, judged: dict[str, dict], judged_by: str, device: Optional[dict]) -> dict:
    """The build's verdict, taken from the strongest oracle it has: {"passed", "failures", "verdict_from"}.

    ``judged`` are the quantities of the execution that ran the whole gold set (``judged_by``: a QDQ
    graph's reference semantics, the RKNN simulator, qnnpack), never this host's fused kernels. ``device``
    is the device-true run, on the board's emulated CPU (stages/arm64/board.py), for Pi targets:
      - it ran and its subset resolves the budget: the device's numbers alone decide;
      - it ran on a subset too small to resolve the budget: the whole set's execution decides, and only
        if the board reproduced it (``device["mismatch"]`` is None); a board that did not fails the build;
      - it could not run here (no emulation): the whole set's execution decides, and says so."""
    if device is None:
        missed = failures(budget, judged)
        return {"passed": not missed, "failures": missed, "verdict_from": judged_by}
    if not device.get("ran"):
        missed = failures(budget, judged)
        return {"passed": not missed, "failures": missed,
                "verdict_from": f"{judged_by}; not checked on the board's CPU here: {device['reason']}"}
    where = f"the emulated {device['cpu']} (n = {device['n']})"
    if resolves(budget, device["quantities"]):
        missed = failures(budget, device["quantities"])
        return {"passed": not missed, "failures": [f"on {where}: {m}" for m in missed],
                "verdict_from": f"device-true: {where}, {device['backend_version']}"}
    missed = failures(budget, judged)
    alone = "too few inputs to decide alone" if device["n"] < device.get("of", device["n"]) else \
        "its intervals too wide to decide alone"
    if device.get("mismatch"):
        missed.append(f"{where} does not reproduce {judged_by}: {device['mismatch']}")
        return {"passed": False, "failures": missed,
                "verdict_from": f"{judged_by} on the whole gold set, NOT reproduced by {where} ({alone})"}
    return {"passed": not missed, "failures": missed,
            "verdict_from": f"{judged_by} on the whole gold set, reproduced by {where} ({alone})"}


def required_inputs(budget: BudgetConfig, labelled: bool) -> dict[str, int]:
    """The fewest gold inputs that could resolve each bound, whatever the artifact: the n at which the
    95 % interval's half-width, with the artifact exactly at its bound, equals the room the bound leaves.

    A drop of d (a fraction) needs at least d of the inputs to change, so its paired interval's
    half-width is about z * sqrt(d / n): n >= z^2 / d. A share bounded below by a needs
    z * sqrt(a (1 - a) / n) <= 1 - a: n >= z^2 a / (1 - a). Cosine and error have no such bound before
    the spread is measured; evaluate checks their intervals."""
    need = {}
    for quantity, _, bound, room in _bounds(budget):
        if room <= 0:
            continue
        if quantity == "drop" and labelled:
            need[quantity] = int(np.ceil(Z95 ** 2 / room))
        elif quantity in FRACTIONS:
            need[quantity] = int(np.ceil(Z95 ** 2 * bound / room))
    return need


def check_resolvable(model: Any, n: int) -> None:
    """Compose time: a gold set of ``n`` inputs must be able to resolve every bound of the model's budget."""
    budget = model.budget
    if model.task.value != "classification":
        for key in CLASSIFIER_ONLY:
            if getattr(budget, key) is not None:
                raise BuildError(f"model {model.name!r}: budget.{key} is for classifiers; its task is "
                                 f"{model.task.value}", hint=f"remove model.budget.{key}")
    if budget.metric and not model.gold.labelled:
        raise BuildError(f"model {model.name!r}: budget.metric {budget.metric!r} needs labels, and gold set "
                         f"{model.gold.name!r} is a fidelity set (labelled: false)",
                         hint="set model.budget.metric: null and bound the fidelity (min_confident_agreement, "
                              "min_top1_in_top5, min_cosine)")
    short = {q: k for q, k in required_inputs(budget, model.gold.labelled).items() if n < k}
    if short:
        detail = ", ".join(f"{q} needs >= {k}" for q, k in short.items())
        raise BuildError(f"model {model.name!r}: gold set {model.gold.name!r} has n = {n}, too few to resolve its "
                         f"budget ({detail})",
                         hint="add real inputs to the gold set (its 95 % interval must be narrower than the budget); "
                              "never widen the budget to fit the set")
