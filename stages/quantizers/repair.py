"""Budget repair: when a quantized graph misses its accuracy budget, keep the layers whose
quantization hurts most in float, one at a time, until the budget holds (or say it cannot).

Sensitivity is measured on calibration data; the stopping rule, "does the budget hold now?", is
asked on the model's validation split (``model.validation``), with the same rule evaluate applies
(stages/core/budget.py). The gold set is never read here: only evaluate reads it.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from stages.core import budget as budget_rule
from stages.core.bench import paired_latency
from stages.core.onnxgraph import run_all, session
from stages.core.config import BudgetConfig
from stages.core.datasets import gold_images, preprocess_for
from stages.core.log import console, track
from stages.core.tasks import TaskScoring, params_of, scoring

from . import Scheme

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # where keeping float buys accuracy


@dataclass
class Judge:
    """Scores a candidate graph against the float graph on a selection set, under the budget."""

    inputs: list[np.ndarray]
    accepted: list[set[int]]
    reference: np.ndarray
    budget: BudgetConfig
    input_name: str
    task: TaskScoring = field(default_factory=lambda: scoring("classification"))
    task_params: dict = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)  # the inputs' names (tasks that pair variants read them)
    dataset: str = ""
    float_metrics: dict = field(init=False)

    def __post_init__(self) -> None:
        self.float_metrics = self.task.score(self.reference, self.accepted, self.ids, self.task_params)

    def missed(self, outputs: np.ndarray) -> tuple[dict, list[str]]:
        quantities = budget_rule.measure(self.budget, self.task, self.reference, outputs, self.accepted, self.ids,
                                         self.task_params)
        # selection asks whether the values hold; whether a set resolves the budget is the verdict's question
        return quantities, budget_rule.failures(self.budget, quantities, resolve=False)

    @property
    def attainable(self) -> bool:
        """Whether the float graph itself meets the budget; if not, no repair can."""
        return not self.missed(self.reference)[1]

    def __call__(self, path: Path) -> dict:
        # Judged as the graph computes on any device (reference semantics), not as this host's fused INT8
        # kernels do: evaluate's verdict reads the same (stages/evaluate.py, `verdict_run`).
        return self.outputs(run_all(path, self.inputs, self.input_name, reference=True))

    def outputs(self, outputs: np.ndarray) -> dict:
        """A candidate's outputs on the selection set (one row per input), against float, under the budget."""
        quantities, failures = self.missed(outputs)
        metric = self.budget.metric if "drop" in quantities else None
        metrics = self.task.score(outputs, self.accepted, self.ids, self.task_params) if metric else {}
        return {"metric": metric, "float": float(self.float_metrics[metric]) if metric else None,
                "quantized": float(metrics[metric]) if metric else None,
                "drop": float(quantities["drop"]["value"]) if metric else 0.0,
                "agreement": float(quantities["agreement"]["value"]),
                **({"error": quantities["error"]["value"]} if "error" in quantities else {}),
                "quantities": quantities, "failures": failures, "passed": not failures}


def validation_judge(cfg, layout) -> Judge:  # noqa: ANN001
    """The judge of the repair's stopping rule: the model's validation split, never its gold set."""
    samples = gold_images(cfg.model.validation)
    pre = preprocess_for(cfg.model.input)
    inputs = [pre(image) for _, image, _ in track(samples, f"budget check: validation set {cfg.model.validation.name}")]
    reference = run_all(layout.rewritten, inputs, cfg.model.input.name)
    return Judge(inputs, [acc for _, _, acc in samples], reference, cfg.model.budget, cfg.model.input.name,
                 task=scoring(cfg.model.task), ids=[ident for ident, _, _ in samples],
                 task_params=params_of(cfg.model), dataset=cfg.model.validation.name)


def output_error(path: Path, inputs: np.ndarray, reference: np.ndarray, input_name: str) -> float:
    """Mean relative squared error of the outputs against float."""
    out = run_all(path, [x[None] for x in inputs], input_name, reference=True).astype(np.float64)
    ref = reference.astype(np.float64)
    return float(np.mean(((out - ref) ** 2).sum(1) / ((ref ** 2).sum(1) + 1e-12)))


def sensitivity(cfg, layout, scheme: Scheme, cache: Optional[Path], tmp: Path) -> dict:  # noqa: ANN001
    """Per compute layer: output error with everything quantized, minus the error with it in float."""
    import onnx

    inputs = np.load(layout.calibration)[:cfg.quant.repair.sensitivity_inputs]
    name = cfg.model.input.name
    reference = run_all(layout.rewritten, [x[None] for x in inputs], name)
    base_path = tmp / "base.onnx"
    scheme.quantize(cfg, layout, base_path, (), cache)
    base = output_error(base_path, inputs, reference, name)
    excluded = set(cfg.quant.exclude_nodes)
    candidates = [n.name for n in onnx.load(str(layout.rewritten)).graph.node
                  if n.op_type in COMPUTE_OPS and n.name not in excluded]
    rows, methods = [], set()
    for node in track(candidates, f"sensitivity of {len(candidates)} layers"):
        path = tmp / "one.onnx"
        if scheme.keep_float is not None and scheme.keep_float(base_path, node, path):
            methods.add("the quantized graph with the layer's quantize/dequantize pairs bypassed")
        else:
            scheme.quantize(cfg, layout, path, [node], cache)
            methods.add("quantized again with the layer in float")
        error = output_error(path, inputs, reference, name)
        rows.append({"node": node, "error_in_float": error, "gain": base - error})
    return {"inputs": len(inputs), "baseline_error": base, "method": sorted(methods),
            "layers": sorted(rows, key=lambda r: -r["gain"])}


def repair(cfg, layout, scheme: Scheme, out: Path, cache: Optional[Path]) -> dict:  # noqa: ANN001
    """Check the budget on ``out``; if it misses, keep layers in float until it holds. Rewrites ``out``."""
    judge = validation_judge(cfg, layout)
    first = judge(out)
    report: dict[str, Any] = {"budget": asdict(judge.budget), "split": judge.dataset,
                              "n": len(judge.inputs), "initial": first, "kept_float": [], "steps": []}
    if first["passed"] or not cfg.quant.repair.enabled:
        report["final"] = first
        return report
    if not judge.attainable:
        console.print("budget missed, and not even the float graph meets it: no repair tried")
        report["final"], report["unattainable"] = first, True
        return report
    console.print(f"budget missed on {judge.dataset} ({'; '.join(first['failures'])}): sensitivity analysis, "
                  "then layers back to float one at a time")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ranked = sensitivity(cfg, layout, scheme, cache, tmp)
        report["sensitivity"] = ranked
        kept: list[str] = []
        result = first
        candidate = tmp / "candidate.onnx"
        for row in ranked["layers"][:cfg.quant.repair.max_float_nodes]:
            kept.append(row["node"])
            scheme.quantize(cfg, layout, candidate, kept, cache)
            result = judge(candidate)
            report["steps"].append({"kept_float": list(kept), **result})
            console.print(f"  + {row['node']} in float: drop {result['drop']:.2f}, agreement {result['agreement']:.3f}")
            if result["passed"]:
                break
        report["kept_float"] = kept if result["passed"] else []
        report["final"] = result if result["passed"] else first
        report["repaired"] = result["passed"]
        if result["passed"]:
            threads = max(1, min(cfg.target.runtime.threads, os.cpu_count() or 1))
            x0 = {cfg.model.input.name: judge.inputs[0]}
            before, after = session(out, threads), session(candidate, threads)
            ms = paired_latency({"before": lambda: before.run(None, x0), "after": lambda: after.run(None, x0)}, 10, 50)
            report["latency_ms"] = {**ms, "where": f"ORT CPU, {threads} thread(s), this machine"}
            out.write_bytes(candidate.read_bytes())
    return report
