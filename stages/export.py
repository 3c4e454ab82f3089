"""export: TorchScript -> ONNX with the model's input/output names, checked by onnx.checker (full)."""
from __future__ import annotations

import warnings

from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.errors import BuildError, first_line
from stages.core.fileio import atomic_path
from stages.core.layout import Layout
from stages.core.pipeline import Stage


def export(cfg: Config, layout: Layout) -> None:
    import onnx
    import torch

    try:
        traced = torch.jit.load(str(layout.traced), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:  # not a TorchScript archive: truncated, or another file
        first = first_line(exc)
        raise BuildError(f"{layout.traced} is not a TorchScript archive torch can load ({first[:200]})",
                         hint=f"rebuild it: `python -m stages.trace model={cfg.model.name}` (or `dvc repro`)") from None
    example = torch.zeros(cfg.model.input.shape)
    with atomic_path(layout.exported) as tmp, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which cannot take a traced
        # module; it is still the path that gives static, reproducible graphs here.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                traced, (example,), str(tmp), dynamo=False, opset_version=cfg.model.export.opset,
                input_names=[cfg.model.input.name], output_names=[cfg.model.output.name],
                do_constant_folding=True,
                dynamic_axes={cfg.model.input.name: dict(cfg.model.export.dynamic_input),
                              cfg.model.output.name: dict(cfg.model.export.dynamic_output)}
                if cfg.model.export.dynamic_input else None,
            )
        except (RuntimeError, TypeError, ValueError) as exc:  # e.g. an op with no ONNX symbolic at this opset
            first = first_line(exc)
            raise BuildError(f"torch.onnx.export failed for model {cfg.model.name!r} at opset "
                             f"{cfg.model.export.opset}: {first[:300]}",
                             hint="try another model.export.opset, or a module rewrite (model.surgery) for the op "
                                  "named above") from None
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise BuildError(f"exported ONNX failed onnx.checker: {exc}",
                             hint="try another model.export.opset, or fix the op named above") from exc


STAGE = Stage(
    name="export", scope="model",
    params=("model.input", "model.output", "model.export"),
    needs=("trace",),
    deps=lambda L: [L.traced],
    outs=lambda L: [L.exported],
    run=export,
    doc="TorchScript -> ONNX (checked)",
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
