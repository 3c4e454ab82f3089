"""prepare: for targets whose toolchain lives elsewhere (TensorRT on a Jetson, RKNN toolkit v1),
build everything up to the vendor tool's inputs and record why the artifact was not built here.

`dvc repro` runs this for the `prepared:` entries of conf/builds.yaml; it succeeds either way,
so one missing toolchain never blocks the other targets. `python -m stages.convert` on the same
target still fails with the reason, and builds it where the toolchain is installed.
"""
from __future__ import annotations

from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.fileio import write_json
from stages.core.layout import Layout
from stages.core.log import console
from stages.core.pipeline import Stage
from stages.formats import FORMATS


def prepare(cfg: Config, layout: Layout) -> dict:
    fmt = FORMATS.get(cfg.target.format)
    files = fmt.prepare(cfg, layout)
    reason = fmt.unavailable(cfg)
    report = {
        "model": cfg.model.name, "target": cfg.target.name, "board": cfg.target.board, "format": cfg.target.format,
        "built": False,
        "reason": reason or ("toolchain available here: build it with "
                             f"`python -m stages.convert model={cfg.model.name} target={cfg.target.name}`"),
        "prepared": [str(p.relative_to(layout.root)) for p in files],
    }
    write_json(layout.prepare_report, report)
    console.print(f"[yellow]not built[/] {cfg.model.name}/{cfg.target.name}: {report['reason']}")
    return report


STAGE = Stage(
    name="prepare", scope="build",
    params=("model", "target", "quant", "rewrite"),
    needs=("quantize",),
    deps=lambda L: [L.quantized, L.quantize_report],  # quantize.json: the RKNN levers chosen (vendor_levers)
    outs=lambda L: [L.prepared_dir, L.prepare_report],
    run=prepare,
    doc="vendor inputs for a toolchain that is not installed here",
    code=("stages/formats",),
    fanout="prepared",
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
