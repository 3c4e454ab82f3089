"""convert: the operator check, then the target's device artifact plus its manifest, in artifacts/<model>/<target>/."""
from __future__ import annotations

from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.errors import ToolchainUnavailable
from stages.core.fileio import atomic_path, write_json
from stages.core.layout import Layout
from stages.core.log import console
from stages.core.manifest import describe, seal
from stages.core.opcheck import check_operators
from stages.core.pipeline import Stage
from stages.core import onnxgraph
from stages.formats import FORMATS


def convert(cfg: Config, layout: Layout) -> dict:
    import onnx

    fmt = FORMATS.get(cfg.target.format)
    graph = onnx.load(str(layout.quantized))
    nodes, where = fmt.accelerated(cfg, graph)
    check_operators(nodes, cfg.target.operators, cfg.target.name, where)
    prepared = fmt.prepare(cfg, layout)
    reason = fmt.unavailable(cfg)
    if reason:
        where = ", ".join(str(p.relative_to(layout.root.parent)) for p in prepared) or "nothing to prepare"
        raise ToolchainUnavailable(f"{cfg.model.name} for {cfg.target.name} cannot be built here: {reason}",
                                   hint=f"the toolchain's inputs are prepared: {where}")
    out = layout.artifact
    manifest = describe(cfg, cfg.target.format, out.name, onnxgraph.io_specs(graph),
                        fmt.toolchain, sources={"quantized.onnx": layout.quantized})
    with atomic_path(out) as tmp:
        extra = fmt.build(cfg, layout, tmp, manifest)
        manifest["toolchain"].update(extra.pop("toolchain", {}))  # e.g. a vendor toolkit in its own venv
        manifest = seal({**manifest, **extra}, tmp)
    # The artifact lands first: a crash before the manifest leaves a mismatch the runtime rejects.
    write_json(layout.manifest, manifest)
    console.print(f"wrote {out.relative_to(layout.root.parent)} ({manifest['size_bytes'] / 1e6:.2f} MB, "
                  f"sha256 {manifest['sha256'][:12]})")
    return manifest


STAGE = Stage(
    name="convert", scope="build",
    params=("model", "target", "quant", "rewrite"),  # the manifest embeds the whole resolved config
    needs=("quantize",),
    deps=lambda L: [L.quantized, L.quantize_report],  # quantize.json: the RKNN levers chosen (vendor_levers)
    outs=lambda L: [L.artifact, L.manifest],
    run=convert,
    doc="device artifact + manifest",
    code=("runtime/manifest.py", "stages/formats"),
    fanout="builds",
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
