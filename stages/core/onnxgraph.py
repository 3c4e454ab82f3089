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
