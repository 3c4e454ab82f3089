"""Per-layer divergence of a QDQ model from its float graph, on real inputs.

Every activation the quantizer wrapped in QuantizeLinear -> DequantizeLinear is compared with
the same tensor of the float graph (exposed as extra ONNX Runtime outputs): cosine similarity and
max absolute error, in graph order, so a user can see where accuracy is lost.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _expose(model: Any, names: list[str]) -> bytes:
    from onnx import helper

    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


def layer_divergence(float_path: Path, quant_path: Path, inputs: list[np.ndarray], input_name: str) -> list[dict]:
    import onnx
    import onnxruntime as ort

    fmodel, qmodel = onnx.load(str(float_path)), onnx.load(str(quant_path))
    producer = {out: node.name for node in fmodel.graph.node for out in node.output}
    q_of = {n.output[0]: n.input[0] for n in qmodel.graph.node if n.op_type == "QuantizeLinear"}
    # float tensor name -> the DequantizeLinear output carrying its quantized value
    pairs = {}
    for node in qmodel.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in q_of and q_of[node.input[0]] in producer:
            pairs.setdefault(q_of[node.input[0]], node.output[0])
    order = [out for node in fmodel.graph.node for out in node.output if out in pairs]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare, not fuse
    fsess = ort.InferenceSession(_expose(fmodel, order), options, providers=["CPUExecutionProvider"])
    qsess = ort.InferenceSession(_expose(qmodel, [pairs[t] for t in order]), options,
                                 providers=["CPUExecutionProvider"])
    dots = {t: 0.0 for t in order}
    fnorm = {t: 0.0 for t in order}
    qnorm = {t: 0.0 for t in order}
    maxerr = {t: 0.0 for t in order}
    for x in inputs:
        fvals = dict(zip(order, fsess.run(order, {input_name: x})))
        qvals = dict(zip(order, qsess.run([pairs[t] for t in order], {input_name: x})))
        for t in order:
            f, q = fvals[t].astype(np.float64).ravel(), qvals[t].astype(np.float64).ravel()
            dots[t] += float(f @ q)
            fnorm[t] += float(f @ f)
            qnorm[t] += float(q @ q)
            maxerr[t] = max(maxerr[t], float(np.abs(f - q).max()))
    return [{"tensor": t, "node": producer[t], "cosine": dots[t] / (np.sqrt(fnorm[t] * qnorm[t]) + 1e-12),
             "max_abs_error": maxerr[t]} for t in order]
