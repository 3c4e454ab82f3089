"""Small ONNX helpers shared by stages: op counts, I/O specs, deterministic saving."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .fileio import atomic_path


def op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def graph_summary(model: Any) -> dict[str, Any]:
    counts = op_counts(model)
    return {"nodes": sum(counts.values()), "ops": counts}


def save(model: Any, path: Path) -> None:
    """Save atomically; ONNX serialization is deterministic for the same proto."""
    import onnx

    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def io_specs(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names, static shapes and element types of graph inputs and outputs."""
    import onnx

    def spec(value_info: Any) -> dict[str, Any]:
        tensor = value_info.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        return {"name": value_info.name, "shape": shape, "dtype": dtype}

    initializers = {init.name for init in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def toposort(graph: Any) -> None:
    """Reorder nodes so each comes after the producers of its inputs (some converters append
    nodes at the end). Stable: nodes already in order keep their order."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError(f"graph {graph.name!r} has a cycle or an input nobody produces: "
                             f"{sorted({i for n in pending for i in n.input} - available)[:5]}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    _set_nodes(graph, ordered)


def _set_nodes(graph: Any, nodes: list) -> None:
    """Replace the graph's node list (copies first: the nodes are views into that list)."""
    copies = [type(n)() for n in nodes]
    for copy, node in zip(copies, nodes):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def drop_duplicate_nodes(graph: Any) -> int:
    """Remove nodes identical to an earlier one (same op, name, inputs, outputs, attributes).

    ORT's float16 converter inserts one input Cast per consumer of a constant; when onnxsim has
    shared one constant among several nodes, those Casts are identical and write the same output
    name, which breaks SSA. The first copy serves every consumer."""
    seen, kept = set(), []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            kept.append(node)
    dropped = len(graph.node) - len(kept)
    if dropped:
        _set_nodes(graph, kept)
    return dropped


def float_outputs(graph: Any) -> list[str]:
    """Drop the QuantizeLinear -> DequantizeLinear pair in front of each graph output, so that the op
    computing an output (a classifier's logits) writes it in float, unrounded: 8 bits over the logits'
    whole range merge the top scores of a confident input. Returns the outputs changed."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    drop, changed = set(), []
    for output in graph.output:
        dq = producer.get(output.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.output[0], 0) != 1 \
                or consumers.get(q.input[0], 0) != 1 or q.input[0] not in producer:
            continue
        source = producer[q.input[0]]
        source.output[list(source.output).index(q.input[0])] = output.name
        drop.update((id(q), id(dq)))
        changed.append(output.name)
    if drop:
        _set_nodes(graph, [n for n in graph.node if id(n) not in drop])
        used = {name for node in graph.node for name in node.input}
        unused = [t for t in graph.initializer if t.name not in used]  # the dropped pairs' scales and zero points
        for tensor in unused:
            graph.initializer.remove(tensor)
    return changed


RESHAPES = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze"})
GATHERS = RESHAPES | {"Concat", "Transpose"}  # ops that only move values: no arithmetic to keep in float


def output_heads(graph: Any) -> list[list[str]]:
    """The subgraphs [first tensor, output] that compute the graph's outputs: from each output back
    through the ops that only move values (a detector's Transpose/Reshape/Concat gathering its heads) to
    each op that computes (a classifier's Gemm, a detector's head convs), whose data input, with the
    reshapes in front of it, starts a subgraph. A vendor toolkit fuses such reshapes away, so their
    tensors may not exist in its graph."""
    producer = {out: node for node in graph.node for out in node.output}
    heads: list[list[str]] = []
    for output in graph.output:
        stack, seen = [output.name], set()
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in seen or not node.input:
                continue
            seen.add(id(node))
            if node.op_type in GATHERS:
                stack.extend(node.input[:1] if node.op_type in RESHAPES else node.input)
                continue
            tensor = node.input[0]
            while tensor in producer and producer[tensor].op_type in RESHAPES:
                tensor = producer[tensor].input[0]
            if [tensor, output.name] not in heads:
                heads.append([tensor, output.name])
    return heads


def session(model: Any, threads: int = 1, reference: bool = False) -> Any:
    """A CPU ONNX Runtime session on a path or a ModelProto, with a fixed thread count. ``reference``:
    graph optimizations off, so a QDQ graph runs as written (its reference semantics), not through
    this host's fused INT8 kernels, whose results depend on the CPU (x86 without VNNI saturates)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if reference:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_all(model: Any, inputs: list, input_name: str, reference: bool = False) -> Any:
    """The first output for each input, concatenated (one row per input)."""
    import os

    import numpy as np

    sess = session(model, threads=os.cpu_count() or 1, reference=reference)
    return np.concatenate([sess.run(None, {input_name: x})[0] for x in inputs])
