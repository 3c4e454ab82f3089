"""The verdict's inputs come from the device-true path (stages/core/budget.py, ``verdict``): the board's
emulated CPU decides when its subset resolves the budget, the whole set's execution (never this host's
fused kernels) decides otherwise, and only if the board reproduced it. So two x86 build hosts, with and
without VNNI, reach the same verdict: the host's numbers are not an input."""
import inspect

import numpy as np

from stages.core import budget as budget_rule
from stages.core.config import BudgetConfig, Task
from stages.core.tasks import scoring

TASK = scoring(Task.classification)
BUDGET = BudgetConfig(metric="top1", max_drop=0.5)


def quantities(n: int, flipped: int) -> dict:
    """A labelled set of n inputs where float is always right and the artifact misses ``flipped`` of them."""
    labels = np.arange(n) % 10
    reference = np.eye(10)[labels] * 5.0
    candidate = reference.copy()
    candidate[:flipped] = np.eye(10)[(labels[:flipped] + 1) % 10] * 5.0
    accepted = [{int(c)} for c in labels]
    return budget_rule.measure(BUDGET, TASK, reference, candidate, accepted, [str(i) for i in range(n)], {})


def device(n: int, flipped: int, mismatch=None) -> dict:
    return {"ran": True, "cpu": "cortex-a72", "n": n, "backend_version": "onnxruntime 1.31.1",
            "quantities": quantities(n, flipped), "mismatch": mismatch}


def test_a_resolving_device_subset_decides_alone_whatever_the_whole_set_execution_says():
    whole_set_fails = quantities(10000, 300)  # a 3-point drop: e.g. a host whose u8 x s8 sums saturate
    v = budget_rule.verdict(BUDGET, whole_set_fails, "this host's fused kernels", device(10000, 10))
    assert v["passed"] and v["verdict_from"].startswith("device-true: the emulated cortex-a72 (n = 10000)")
    v = budget_rule.verdict(BUDGET, quantities(10000, 0), "reference semantics", device(10000, 300))
    assert not v["passed"] and "on the emulated cortex-a72 (n = 10000): drop 3.00 > max_drop 0.5" in v["failures"][0]


def test_a_small_device_subset_validates_the_whole_set_execution_and_fails_when_it_does_not_reproduce_it():
    whole = quantities(10000, 10)
    small = device(16, 0)
    assert not budget_rule.resolves(BUDGET, small["quantities"])
    v = budget_rule.verdict(BUDGET, whole, "reference semantics of the QDQ graph", small)
    assert v["passed"] and "reproduced by the emulated cortex-a72 (n = 16)" in v["verdict_from"]
    v = budget_rule.verdict(BUDGET, whole, "reference semantics of the QDQ graph",
                            device(16, 0, mismatch="decisions agree on 0.900 of 16 inputs (< 0.98)"))
    assert not v["passed"] and "does not reproduce reference semantics of the QDQ graph" in v["failures"][0]
    assert "NOT reproduced by the emulated cortex-a72 (n = 16)" in v["verdict_from"]
    assert "too few inputs to decide alone" in budget_rule.verdict(
        BUDGET, whole, "reference semantics", {**small, "of": 10000})["verdict_from"]
    # the board ran the whole set, but what it measured does not resolve the budget: not "too few inputs"
    straddling = {"drop": {"value": 0.25, "n": 1200, "ci95": [-0.45, 0.95]},
                  "agreement": {"value": 0.985, "n": 1200, "ci95": [0.977, 0.991]}}
    wide = {**device(1200, 0), "of": 1200, "quantities": straddling}
    assert "its intervals too wide to decide alone" in budget_rule.verdict(BUDGET, whole, "reference semantics",
                                                                           wide)["verdict_from"]


def test_without_emulation_the_verdict_says_it_was_not_checked_on_the_board():
    v = budget_rule.verdict(BUDGET, quantities(10000, 10), "reference semantics",
                            {"ran": False, "cpu": "cortex-a72", "reason": "needs root"})
    assert v["passed"] and "not checked on the board's CPU here: needs root" in v["verdict_from"]


def test_the_build_hosts_numbers_are_no_input_of_the_verdict():
    """evaluate records the host's fused-kernel numbers under build_host; the verdict takes the whole set's
    judged execution and the device run, and nothing else."""
    assert list(inspect.signature(budget_rule.verdict).parameters) == ["budget", "judged", "judged_by", "device"]
    from stages import evaluate

    source = inspect.getsource(evaluate.evaluate)
    assert "budget_rule.verdict(budget, quantities, judged_by, device)" in source
    assert "quantities = budget_rule.measure(budget, task, reference, candidate," in source
    assert "candidate, sanity_out = judged.outputs[:n_gold]" in source


def test_an_interval_wholly_inside_the_bound_decides_it_however_wide():
    """A paired drop's interval widens with the inputs that changed, either way: BlazeFace's INT8 build
    gained 12 gold windows and lost 3 (drop -0.75 points, interval [-1.50, -0.11], half-width 0.70 > 0.5),
    which decides `drop <= 0.5` as surely as a narrow interval would. One that straddles the bound does not."""
    better = {"drop": {"value": -0.75, "n": 1200, "ci95": [-1.50, -0.11]}}
    assert budget_rule.failures(BUDGET, better) == []
    straddles = {"drop": {"value": 0.25, "n": 1200, "ci95": [-0.45, 0.95]}}
    assert budget_rule.failures(BUDGET, straddles) == [
        "drop: n = 1200 cannot resolve the bound 0.5 (95 % interval half-width 0.7 > 0.5)"]
    worse = {"drop": {"value": 2.0, "n": 1200, "ci95": [1.2, 2.8]}}  # decided, against: only the miss is named
    assert budget_rule.failures(BUDGET, worse) == ["drop 2.00 > max_drop 0.5 (n = 1200)"]
    fraction = BudgetConfig(metric=None, min_agreement=0.98)
    assert budget_rule.failures(fraction, {"agreement": {"value": 0.995, "n": 300, "ci95": [0.981, 0.999]}}) == []
    assert "cannot resolve" in budget_rule.failures(
        fraction, {"agreement": {"value": 0.99, "n": 90, "ci95": [0.94, 0.998]}})[0]
