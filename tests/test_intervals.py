"""Every verdict carries its uncertainty: Wilson intervals for proportions, Newcombe's paired
interval for a drop measured on the same inputs, and the task's per-input hits behind them."""
import numpy as np
import pytest

from stages.core.metrics import paired_difference, proportion, wilson
from stages.core.tasks import intervals, scoring


def test_wilson_matches_the_textbook_values():
    assert wilson(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)  # the "rule of three"-like bound
    assert wilson(8, 9) == pytest.approx([0.5650, 0.9801], abs=1e-4)
    assert wilson(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)


def test_a_nine_photo_set_cannot_resolve_a_half_point_budget():
    """MobileNetV2's former gold set: one photo is 11.1 points, the drop's interval spans tens of points."""
    same = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    drop = paired_difference(same, same)
    assert drop["value"] == 0.0 and drop["ci95"][1] > 16.0  # a half-width of 16.6 points, for a 0.5-point budget


def test_paired_interval_narrows_with_n_and_holds_its_estimate():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1000, 10000):
        ref = rng.random(n) < 0.88
        cand = ref.copy()
        flip = rng.choice(n, n // 100, replace=False)
        cand[flip] = ~cand[flip]
        d = paired_difference(ref, cand)
        assert d["ci95"][0] <= d["value"] <= d["ci95"][1]
        widths.append(d["ci95"][1] - d["ci95"][0])
    assert widths[0] > widths[1] > widths[2] and widths[2] < 0.5  # 10,000 inputs resolve half a point


def test_classification_intervals_name_n_for_every_headline_metric():
    logits = np.eye(4)[[0, 1, 2, 3, 0, 1]] + 0.01
    cand = logits.copy()
    cand[0] = np.eye(4)[1]
    accepted = [{0}, {1}, {2}, {3}, {0}, {1}]
    out = intervals(scoring("classification"), logits, cand, accepted, [str(i) for i in range(6)], {}, "top1")
    assert out["float"]["top1"]["value"] == 100.0 and out["artifact"]["top1"]["k"] == 5
    assert out["agreement"]["n"] == 6 and out["drop"]["changed"] == {"lost": 1, "gained": 0}
    assert proportion(np.ones(6, bool))["ci95"][0] < 100.0


def test_face_intervals_use_each_metrics_own_population():
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.9, 0.1], [0.3, 0.7]])  # 2 faces, 2 non-faces
    accepted = [{1}, {1}, {0}, {0}]
    out = intervals(scoring("face_classification"), probs, probs, accepted, list("abcd"), {"threshold": 0.6}, "recall")
    assert out["artifact"]["recall"]["n"] == 2 and out["artifact"]["false_positives"] == proportion(np.array([False, True]))
    assert out["drop"]["metric"] == "recall" and out["drop"]["value"] == 0.0
