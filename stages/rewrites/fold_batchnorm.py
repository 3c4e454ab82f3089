"""Fold BatchNormalization into the Conv before it (exact up to float rounding).

onnxsim folds most of these; this catches the ones a simplifier leaves (simplifier=none, or a
BN after a Conv with a shared weight) so NPUs that lack a standalone BN op can still run.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import REWRITES


@REWRITES.register("fold_batchnorm")
def fold_batchnorm(model: Any, params: dict[str, Any]) -> list[str]:
    from onnx import numpy_helper

    if params:
        from stages.core.errors import BuildError
        raise BuildError(f"rewrite fold_batchnorm takes no params, got {sorted(params)}",
                         hint="remove `params` from conf/rewrite/fold_batchnorm.yaml")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producers = {out: node for node in graph.node for out in node.output}
    changed, dead = [], []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers.get(conv.output[0]) != 1:
            continue
        names = [conv.input[1], *bn.input[1:5]]
        if not all(n in inits for n in names) or consumers.get(conv.input[1]) != 1:
            continue
        weight, scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in names)
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(var + eps)
        conv_bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                     if len(conv.input) > 2 and conv.input[2] in inits else np.zeros_like(mean))
        dtype = numpy_helper.to_array(inits[conv.input[1]]).dtype
        new_w = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(dtype)
        new_b = ((conv_bias - mean) * factor + bias).astype(dtype)
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(new_w, conv.input[1]))
        bias_name = f"{conv.name or conv.output[0]}_folded_bias"
        graph.initializer.append(numpy_helper.from_array(new_b, bias_name))
        del conv.input[2:]
        conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        dead.append(bn)
        changed.append(bn.name or bn.output[0])
    for node in dead:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    return changed
