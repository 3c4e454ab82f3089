"""rewrite: apply the target's graph rewrites (conf/rewrite/*.yaml) in order; report what changed."""
from __future__ import annotations

from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.errors import BuildError
from stages.core.fileio import write_json
from stages.core.layout import Layout
from stages.core.pipeline import Stage
from stages.core import onnxgraph


def rewrite(cfg: Config, layout: Layout) -> list[dict]:
    import onnx

    from stages.rewrites import REWRITES

    model = onnx.load(str(layout.simplified))
    applied = []
    for name, spec in cfg.rewrite.items():
        changed = REWRITES.get(spec.fn)(model, dict(spec.params))
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise BuildError(f"rewrite {name!r} produced an invalid graph: {exc}",
                             hint=f"drop {name!r} from the target's rewrites and report this") from exc
        applied.append({"rewrite": name, "fn": spec.fn, "changed": changed, "n_changed": len(changed)})
    onnxgraph.save(model, layout.rewritten)
    write_json(layout.rewrite_report, {"applied": applied, "graph": onnxgraph.graph_summary(model)})
    return applied


STAGE = Stage(
    name="rewrite", scope="build",
    params=("model.input", "rewrite"),
    needs=("simplify",),
    deps=lambda L: [L.simplified],
    outs=lambda L: [L.rewritten, L.rewrite_report],
    run=rewrite,
    doc="target's graph rewrites",
    code=("stages/rewrites",),
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
