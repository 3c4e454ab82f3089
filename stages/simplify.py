"""simplify: onnxsim (constant folding, shape inference, BN folding); records node counts."""
from __future__ import annotations

from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.errors import BuildError
from stages.core.fileio import write_json
from stages.core.layout import Layout
from stages.core.pipeline import Stage
from stages.core import onnxgraph


def simplify(cfg: Config, layout: Layout) -> dict:
    import onnx

    model = onnx.load(str(layout.exported))
    before = onnxgraph.graph_summary(model)
    tool = cfg.model.export.simplifier
    if tool == "onnxsim":
        from onnxsim import simplify as onnxsim_simplify

        model, ok = onnxsim_simplify(model)
        if not ok:
            raise BuildError("onnxsim could not validate the simplified graph",
                             hint="set model.export.simplifier=none to skip simplification")
    elif tool != "none":
        raise BuildError(f"unknown model.export.simplifier {tool!r}", hint="use onnxsim or none")
    onnx.checker.check_model(model, full_check=True)
    report = {"simplifier": tool, "before": before, "after": onnxgraph.graph_summary(model)}
    onnxgraph.save(model, layout.simplified)
    write_json(layout.simplify_report, report)
    return report


STAGE = Stage(
    name="simplify", scope="model",
    params=("model.input", "model.export.simplifier"),
    needs=("export",),
    deps=lambda L: [L.exported],
    outs=lambda L: [L.simplified, L.simplify_report],
    run=simplify,
    doc="ONNX -> simplified ONNX",
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
