"""NNCF's post-training quantization of the ONNX graph (``nncf.quantize``, ONNX backend on ONNX
Runtime): min/max ranges over the calibration tensors, then fast bias correction, which shifts each
quantized layer's bias so that its mean output matches float's; QDQ out, as ``ort_static`` writes.

``symmetric_activations`` picks NNCF's preset (true: performance, symmetric; false: mixed,
asymmetric activations); weights are symmetric per channel. ``exclude_nodes``/``exclude_op_types``
(and the repair's nodes) become NNCF's ignored scope; ``float_outputs`` drops the QDQ pair on each
output afterwards, as for ``ort_static``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from stages.core import onnxgraph
from stages.core.errors import BuildError, first_line
from stages.core.log import console

from . import SCHEMES, Scheme, calibration_batches


def _nncf(cfg, layout, out: Path, exclude: Sequence[str] = (), cache: Optional[Path] = None) -> dict:  # noqa: ANN001
    try:
        import nncf
    except ImportError:
        raise BuildError("quant scheme nncf_ptq needs NNCF, which is not installed",
                         hint="pip install -e '.[build]' (the build extra pins nncf)") from None
    import onnx

    q = cfg.quant
    batches = calibration_batches(cfg, layout)
    n = len(batches)
    name = cfg.model.input.name
    dataset = nncf.Dataset(batches, lambda x: {name: x})
    preset = nncf.QuantizationPreset.PERFORMANCE if q.symmetric_activations else nncf.QuantizationPreset.MIXED
    ignored = nncf.IgnoredScope(names=[*q.exclude_nodes, *exclude], types=list(q.exclude_op_types), validate=False)
    console.print(f"NNCF {nncf.__version__}: min/max + fast bias correction on {n} tensors ({preset.value} preset)")
    try:
        model = nncf.quantize(onnx.load(str(layout.rewritten)), dataset, preset=preset, subset_size=n,
                              fast_bias_correction=True, ignored_scope=ignored)
    except (nncf.errors.ValidationError, nncf.errors.UnsupportedModelError, RuntimeError, ValueError) as exc:
        raise BuildError(f"NNCF could not quantize {layout.rewritten}: {type(exc).__name__}: {first_line(exc)[:300]}",
                         hint="check quant.exclude_nodes / exclude_op_types, or try quant=int8_static") from None
    details: dict = {"calibration_samples": n, "nncf": nncf.__version__, "preset": preset.value,
                     "fast_bias_correction": True}
    if q.float_outputs:
        details["float_outputs"] = onnxgraph.float_outputs(model.graph)
    onnxgraph.save(model, out)
    return details


SCHEMES.register("nncf_ptq")(Scheme(_nncf, repairable=True, qdq=True))
