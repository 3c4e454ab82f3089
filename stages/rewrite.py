"""rewrite: apply the target's graph rewrites (conf/rewrite/*.yaml) in order, and measure each one.

For every rewrite that changed the graph, the report gives the nodes it changed, the max abs
difference of the model's outputs before and after it on calibration inputs, and ORT CPU latency
before and after (this machine, float graph: the change in work, not the board's latency).
"""
from __future__ import annotations

import numpy as np

from stages.core import onnxgraph
from stages.core.bench import paired_latency
from stages.core.cli import hydra_entry
from stages.core.config import Config, RewriteKind
from stages.core.errors import BuildError
from stages.core.fileio import write_json
from stages.core.layout import Layout
from stages.core.log import console
from stages.core.pipeline import Stage

CHECK_INPUTS = 16  # calibration tensors each rewrite's output error is measured on


def measure(before, after, inputs: np.ndarray, input_name: str) -> dict:  # noqa: ANN001
    """Max abs output difference and paired ORT latency of two versions of a graph."""
    old, new = onnxgraph.session(before), onnxgraph.session(after)
    error = max(float(np.abs(old.run(None, {input_name: x[None]})[0] - new.run(None, {input_name: x[None]})[0]).max())
                for x in inputs)
    x0 = {input_name: inputs[0][None]}
    ms = paired_latency({"before": lambda: old.run(None, x0), "after": lambda: new.run(None, x0)}, 10, 50)
    return {"max_abs_error": error, "latency_ms": {"before": ms["before"], "after": ms["after"],
                                                   "where": "ORT CPU, float graph, 1 thread, this machine"}}


def rewrite(cfg: Config, layout: Layout) -> list[dict]:
    import onnx

    from stages.rewrites import REWRITES

    model = onnx.load(str(layout.simplified))
    inputs = np.load(layout.calibration)[:CHECK_INPUTS]
    applied = []
    for name, spec in cfg.rewrite.items():
        if spec.kind == RewriteKind.module:
            raise BuildError(f"rewrite {name!r} is a module rewrite: it changes the function and needs fine-tuning",
                             hint=f"list it in a model variant's surgery.rewrites (see conf/model/fashion_cnn_npu.yaml), "
                                  f"not in target {cfg.target.name!r}'s rewrites")
        before = onnx.ModelProto()
        before.CopyFrom(model)
        changed = REWRITES.get(spec.fn)(model, dict(spec.params))
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise BuildError(f"rewrite {name!r} produced an invalid graph: {exc}",
                             hint=f"drop {name!r} from the target's rewrites and report this") from exc
        entry = {"rewrite": name, "fn": spec.fn, "changed": changed, "n_changed": len(changed)}
        if changed:
            entry.update(measure(before, model, inputs, cfg.model.input.name))
            console.print(f"{name}: {len(changed)} node(s), max abs error {entry['max_abs_error']:.2e}, ORT latency "
                          f"{entry['latency_ms']['before']:.3f} -> {entry['latency_ms']['after']:.3f} ms")
        applied.append(entry)
    onnxgraph.save(model, layout.rewritten)
    write_json(layout.rewrite_report, {"applied": applied, "graph": onnxgraph.graph_summary(model)})
    return applied


STAGE = Stage(
    name="rewrite", scope="build",
    params=("model.input", "rewrite"),
    needs=("simplify", "calibrate"),
    deps=lambda L: [L.simplified, L.calibration],
    outs=lambda L: [L.rewritten, L.rewrite_report],
    run=rewrite,
    doc="target's graph rewrites, each measured",
    code=("stages/rewrites",),
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
