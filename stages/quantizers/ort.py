"""ONNX Runtime's quantizers: static QDQ (8- or 16-bit activations, any calibration method, nodes
or op types kept in float), dynamic INT8, and FP16 conversion.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

from stages.core import onnxgraph
from stages.core.config import CalibMethod, QType
from stages.core.errors import BuildError, first_line
from stages.core.log import console, track

from . import SCHEMES, Scheme, calibration_batches

# Ops ORT quantizes when no list is given; "keep these op types in float" removes from it.
QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "Sigmoid", "HardSigmoid",
               "HardSwish", "AveragePool", "GlobalAveragePool", "MaxPool", "Concat", "Slice", "Split", "Resize",
               "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Pad", "Softmax", "LeakyRelu",
               "InstanceNormalization", "Where", "Gather", "ArgMax")


def _qtype(q: QType):  # noqa: ANN202
    from onnxruntime.quantization import QuantType

    return {QType.int8: QuantType.QInt8, QType.uint8: QuantType.QUInt8,
            QType.int16: QuantType.QInt16, QType.uint16: QuantType.QUInt16}[q]


def _prepared(layout, tmp: Path) -> Path:  # noqa: ANN001
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(layout.rewritten), str(prepared), skip_symbolic_shape=True)
    return prepared


def _static(cfg, layout, out: Path, exclude: Sequence[str] = (), cache: Optional[Path] = None) -> dict:  # noqa: ANN001
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat

    q = cfg.quant
    batches = calibration_batches(cfg, layout)
    n = len(batches)
    input_name = cfg.model.input.name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(track(batches, f"calibrating ({q.calibration.method.value})"))

        def get_next(self) -> dict | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    methods = {CalibMethod.minmax: CalibrationMethod.MinMax, CalibMethod.entropy: CalibrationMethod.Entropy,
               CalibMethod.percentile: CalibrationMethod.Percentile}
    op_types = [op for op in QUANTIZABLE if op not in q.exclude_op_types] if q.exclude_op_types else None
    with tempfile.TemporaryDirectory() as tmp:
        prepared = _prepared(layout, Path(tmp))
        if cache is None or not cache.exists():
            console.print(f"calibrating on {n} tensors ({q.calibration.method.value})")  # tests wait for this line
        _checked(
            "quantize_static", str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
            per_channel=q.per_channel, reduce_range=False,
            activation_type=_qtype(q.activation_type), weight_type=_qtype(q.weight_type),
            calibrate_method=methods[q.calibration.method],
            nodes_to_exclude=[*q.exclude_nodes, *exclude], op_types_to_quantize=op_types,
            calibration_cache_path=cache,
            extra_options={
                "ActivationSymmetric": q.symmetric_activations,
                "WeightSymmetric": q.symmetric_weights,
                "CalibPercentile": q.calibration.percentile,
                "CalibMovingAverage": q.calibration.moving_average,
                "AddQDQPairToWeight": q.tensorrt_qdq,
                "DedicatedQDQPair": q.tensorrt_qdq,
            },
        )
    details: dict = {"calibration_samples": n}
    if q.float_outputs:
        import onnx

        model = onnx.load(str(out))
        details["float_outputs"] = onnxgraph.float_outputs(model.graph)
        onnxgraph.save(model, out)
    return details


def _checked(function: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
    """One of ONNX Runtime's quantizers (quantize_static, quantize_dynamic), its failures (a node it
    cannot quantize, a bad exclusion) as a BuildError naming the graph, instead of the library's traceback."""
    from onnxruntime import quantization

    try:
        getattr(quantization, function)(*args, **kwargs)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = first_line(exc)
        raise BuildError(f"ONNX Runtime's quantizer failed on {args[0]}: {type(exc).__name__}: {first[:300]}",
                         hint="check quant.exclude_nodes / exclude_op_types name nodes and ops of this graph, "
                              "or try another scheme") from None


def _dynamic(cfg, layout, out: Path, exclude: Sequence[str] = (), cache: Optional[Path] = None) -> dict:  # noqa: ANN001
    """Weights INT8 ahead of time, activations quantized per call (no calibration): for Linear/MatMul."""
    q = cfg.quant
    op_types = list(q.op_types) or ["MatMul", "Gemm"]
    with tempfile.TemporaryDirectory() as tmp:
        _checked("quantize_dynamic", str(_prepared(layout, Path(tmp))), str(out), per_channel=q.per_channel,
                 reduce_range=False, weight_type=_qtype(q.weight_type), op_types_to_quantize=op_types,
                 nodes_to_exclude=[*q.exclude_nodes, *exclude])
    return {"op_types": op_types}


def _fp16(cfg, layout, out: Path, exclude: Sequence[str] = (), cache: Optional[Path] = None) -> dict:  # noqa: ANN001
    """Weights and activations in FP16, float32 at the model's inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    q = cfg.quant
    model = convert_float_to_float16(onnx.load(str(layout.rewritten)), keep_io_types=True,
                                     op_block_list=list(q.exclude_op_types) or None,
                                     node_block_list=[*q.exclude_nodes, *exclude] or None)
    onnxgraph.drop_duplicate_nodes(model.graph)  # one Cast per consumer of a shared constant, all alike
    onnxgraph.toposort(model.graph)  # the converter appends its input Casts at the end
    onnx.save(model, str(out))
    return {"kept_float32": [*q.exclude_op_types, *q.exclude_nodes, *exclude]}


SCHEMES.register("ort_static")(Scheme(_static, repairable=True, qdq=True))
SCHEMES.register("ort_dynamic")(Scheme(_dynamic))
SCHEMES.register("fp16")(Scheme(_fp16))
