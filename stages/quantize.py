"""quantize: the quant scheme named by ``quant.scheme`` (stages/quantizers) turns the rewritten
float graph into the graph convert packages, then checks the accuracy budget on the gold set and,
for schemes that can keep layers in float, repairs a miss (stages/quantizers/repair.py).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from stages.core import onnxgraph
from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.errors import BuildError
from stages.core.fileio import atomic_path, write_json
from stages.core.layout import Layout
from stages.core.log import console
from stages.core.pipeline import Stage


def quantize(cfg: Config, layout: Layout) -> dict:
    import onnx

    from stages.quantizers import SCHEMES
    from stages.quantizers.repair import repair

    scheme = SCHEMES.get(cfg.quant.scheme)
    budget = None
    with tempfile.TemporaryDirectory() as tmp, atomic_path(layout.quantized) as out:
        cache = Path(tmp) / "calibration.json"  # calibrate once, however often a repair re-quantizes
        details = scheme.quantize(cfg, layout, out, (), cache)
        if scheme.repairable:
            budget = repair(cfg, layout, scheme, out, cache)
        model = onnx.load(str(out))
        onnx.checker.check_model(model, full_check=True)
    report = {"quant": cfg.quant.name, "scheme": cfg.quant.scheme, **details,
              "kept_float": [*cfg.quant.exclude_nodes, *(budget or {}).get("kept_float", [])],
              "budget_check": budget, "graph": onnxgraph.graph_summary(model)}
    write_json(layout.quantize_report, report)
    if budget and not budget["final"]["passed"]:
        print_budget_table(f"{cfg.model.name} / {cfg.target.name} / {cfg.quant.name}: budget check", budget)
        if not cfg.quant.repair.enabled:  # the scheme as it is: evaluate measures the artifact and fails the build
            console.print("[yellow]budget missed and quant.repair is off: evaluate will fail this build[/]")
            return report
        why = ("not even the float graph meets it, so check the budget's numbers" if budget.get("unattainable")
               else "the repair could not fix it")
        raise BuildError(
            f"{cfg.model.name} on {cfg.target.name} with {cfg.quant.name} misses its accuracy budget "
            f"on its validation split {budget['split']} ({'; '.join(budget['final']['failures'])}) and {why}",
            hint=f"see {layout.quantize_report} (per-layer sensitivity, steps); raise quant.repair.max_float_nodes, "
                 "try another calibration method or per-channel weights; the budget is the model's requirement")
    return report


def print_budget_table(title: str, budget: dict) -> None:
    """The budget check as a table: as quantized, then each repair step, each against the budget."""
    from rich.table import Table

    b = budget["budget"]
    metric = {"top1": "top-1 %", "top5": "top-5 %", None: "(no metric)"}.get(b["metric"], b["metric"])
    table = Table(title=title, title_justify="left")
    for col in ("graph", metric, "drop", "agreement", "verdict"):
        table.add_column(col, justify="left" if col == "graph" else "right")
    first = budget["initial"]

    def num(value: Any, spec: str = ".2f") -> str:
        return "" if value is None else format(value, spec)

    table.add_row("float (rewritten ONNX)", num(first["float"]), "", "", "")
    rows = [("as quantized", first)] + [(f"+ {s['kept_float'][-1]} in float", s) for s in budget["steps"]]
    for name, r in rows:
        error = f" (error {r['error']:.3f})" if "error" in r else ""
        table.add_row(name, num(r["quantized"]), num(r["drop"]) if b["metric"] else "", f"{r['agreement']:.3f}{error}",
                      "[green]PASS[/]" if r["passed"] else "[red]FAIL[/]")
    table.add_row("budget", "", f"≤ {b['max_drop']}" if b["metric"] else "",
                  (f"≥ {b['min_agreement']}" if b["min_agreement"] is not None else "")
                  + (f" error ≤ {b['max_error']}" if b.get("max_error") is not None else ""), "")
    console.print(table)


STAGE = Stage(
    name="quantize", scope="build",
    params=("model.module", "model.surgery", "model.input", "model.export.opset", "model.validation", "quant",
            "model.task", "model.task_params", "model.budget", "target.runtime", "rewrite"),
    needs=("rewrite", "calibrate"),
    deps=lambda L: [L.rewritten, L.calibration, L.weights],  # weights: schemes that quantize the module
    outs=lambda L: [L.quantized, L.quantize_report],
    run=quantize,
    doc="float ONNX -> quantized ONNX, budget checked and repaired",
    code=("stages/quantizers", "stages/zoo", "stages/rewrites/modules.py", "stages/formats", "runtime"),
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
