"""quantize: the quant scheme named by ``quant.scheme`` turns the rewritten float graph into the
graph the converter packages. ``none`` passes float through; ``ort_static`` is ONNX Runtime's
static QDQ quantization, calibrated on the calibrate stage's tensors.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from stages.core.cli import hydra_entry
from stages.core.config import CalibMethod, Config, QType
from stages.core.errors import BuildError
from stages.core.fileio import atomic_path, write_json
from stages.core.layout import Layout
from stages.core.log import console, track
from stages.core.pipeline import Stage
from stages.core.registry import Registry
from stages.core import onnxgraph

Quantizer = Callable[[Config, Layout, Path], dict]
SCHEMES: Registry[Quantizer] = Registry("quant scheme", "quant.scheme")


@SCHEMES.register("none")
def _float(cfg: Config, layout: Layout, out: Path) -> dict:
    shutil.copyfile(layout.rewritten, out)
    return {}


@SCHEMES.register("vendor")
def _vendor(cfg: Config, layout: Layout, out: Path) -> dict:
    """The vendor toolchain quantizes during convert (RKNN): hand it the float graph."""
    shutil.copyfile(layout.rewritten, out)
    return {"quantized_by": f"the {cfg.target.format} toolchain during convert"}


@SCHEMES.register("ort_static")
def _ort_static(cfg: Config, layout: Layout, out: Path) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    q = cfg.quant
    data = np.load(layout.calibration)
    n = q.calibration.num_samples
    if n > len(data):
        raise BuildError(f"quant.calibration.num_samples={n} but the calibration set has {len(data)} tensors",
                         hint="lower num_samples or raise model.calibration.augment.samples")
    batches = [data[i:i + 1] for i in range(n)]
    input_name = cfg.model.input.name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(track(batches, f"calibrating ({q.calibration.method.value})"))

        def get_next(self) -> dict | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    qtypes = {QType.int8: QuantType.QInt8, QType.uint8: QuantType.QUInt8}
    methods = {CalibMethod.minmax: CalibrationMethod.MinMax, CalibMethod.entropy: CalibrationMethod.Entropy,
               CalibMethod.percentile: CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(layout.rewritten), str(prepared), skip_symbolic_shape=True)
        console.print(f"calibrating on {n} tensors ({q.calibration.method.value})")  # tests wait for this line
        quantize_static(
            str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
            per_channel=q.per_channel, reduce_range=False,
            activation_type=qtypes[q.activation_type], weight_type=qtypes[q.weight_type],
            calibrate_method=methods[q.calibration.method],
            nodes_to_exclude=list(q.exclude_nodes), op_types_to_quantize=None,
            extra_options={
                "ActivationSymmetric": q.symmetric_activations,
                "WeightSymmetric": q.symmetric_weights,
                "CalibPercentile": q.calibration.percentile,
                "AddQDQPairToWeight": q.tensorrt_qdq,
                "DedicatedQDQPair": q.tensorrt_qdq,
            },
        )
    return {"calibration_samples": n}


def quantize(cfg: Config, layout: Layout) -> dict:
    import onnx

    with atomic_path(layout.quantized) as tmp:
        details = SCHEMES.get(cfg.quant.scheme)(cfg, layout, tmp)
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model, full_check=True)
    report = {"quant": cfg.quant.name, "scheme": cfg.quant.scheme, **details,
              "graph": onnxgraph.graph_summary(model)}
    write_json(layout.quantize_report, report)
    return report


STAGE = Stage(
    name="quantize", scope="build",
    params=("model.input", "quant"),
    needs=("rewrite", "calibrate"),
    deps=lambda L: [L.rewritten, L.calibration],
    outs=lambda L: [L.quantized, L.quantize_report],
    run=quantize,
    doc="float ONNX -> quantized ONNX",
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
