"""``onpu``: the Raspberry Pi 5 NPU container (this project's definition; see README, ".onpu").

A zip (stored, sorted, fixed timestamps: byte-reproducible) holding
  onpu.json   header: format version, member sha256s, the partition plan
  model.onnx  the whole INT8 QDQ graph (what runs when no NPU provider is registered)
  npu.onnx    the backbone partition, restricted to the NPU's op set
  cpu.onnx    the head partition, run by the CPU (absent when the NPU runs everything)
  manifest.json  the build manifest, less the container's own sha256 and size
The cut between the partitions is placed on 8-bit tensors where the graph allows it.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from stages.core.errors import BuildError

from . import FORMATS, Format

ONPU_VERSION = 1
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def float_compute(model: Any) -> list[Any]:
    """The weighted nodes that compute in float: their weight is not the output of a DequantizeLinear (a
    scheme kept them out of INT8, e.g. a detector's output heads, or the budget repair put them back).
    An INT8 NPU cannot run them, so each starts the CPU part."""
    dequantized = {out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    if not dequantized:  # not a quantized graph at all: the operator check judges it as it is
        return []
    return [n for n in model.graph.node
            if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] not in dequantized]


def plan_partition(model: Any, cpu_from: list[str]) -> dict[str, Any]:
    """Split nodes into an NPU backbone and a CPU head (what the NPU may run is the operator check's job).
    The head starts at the first node of a ``cpu_from`` op type and at every node computing in float
    (``float_compute``), and takes everything downstream of them."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    first_head = next((n for n in nodes if n.op_type in cpu_from), None)
    starts = ([first_head] if first_head is not None else []) + float_compute(model)
    cpu: set[str] = set()
    if starts:
        frontier = list(starts)
        while frontier:  # everything downstream of the starts
            node = frontier.pop()
            if node.name in cpu:
                continue
            cpu.add(node.name)
            for out in node.output:
                frontier.extend(consumers.get(out, []))
        graph_inputs = {i.name for i in model.graph.input}
        producers = {out: n for n in nodes for out in n.output}

        def constant_only(node: Any) -> bool:
            return all(name not in graph_inputs and (name not in producers or constant_only(producers[name]))
                       for name in node.input if name)

        changed = True
        while changed:  # pull in weight-dequantize nodes and activation dequantizes feeding only the head
            changed = False
            for node in reversed(nodes):
                users = [c for out in node.output for c in consumers.get(out, [])]
                if node.name in cpu or not users or not all(u.name in cpu for u in users):
                    continue
                if node.op_type == "DequantizeLinear" or constant_only(node):
                    cpu.add(node.name)
                    changed = True
    npu_nodes = [n for n in nodes if n.name not in cpu]
    npu_names = {n.name for n in npu_nodes}
    graph_outputs = [o.name for o in model.graph.output]
    cut = sorted({name for n in nodes if n.name in cpu for name in n.input
                  if any(name in p.output for p in npu_nodes)})
    npu_outputs = cut + [o for o in graph_outputs if any(o in n.output for n in npu_nodes)]
    return {
        "npu": {"nodes": [n.name for n in npu_nodes], "inputs": [i.name for i in model.graph.input],
                "outputs": npu_outputs},
        "cpu": {"nodes": [n.name for n in nodes if n.name in cpu], "inputs": cut,
                "outputs": [o for o in graph_outputs if o not in npu_outputs]},
        "cut_dtypes": _dtypes_of(model, cut),
        "npu_ops": sorted({n.op_type for n in nodes if n.name in npu_names}),
        "cpu_ops": sorted({n.op_type for n in nodes if n.name in cpu}),
    }


def _dtypes_of(model: Any, names: list[str]) -> dict[str, str]:
    """Element types of the named tensors, from one shape-inference pass."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {info.name: onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type).name
             for info in [*inferred.graph.value_info, *inferred.graph.output]}
    return {name: types.get(name, "unknown") for name in names}


def write_container(out: Path, members: dict[str, bytes], header: dict[str, Any]) -> None:
    header = {**header, "members": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())}}
    entries = {"onpu.json": (json.dumps(header, indent=2, sort_keys=True) + "\n").encode(), **members}
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, entries[name])


def _npu(cfg) -> Any:  # noqa: ANN001
    if cfg.target.npu is None:
        raise BuildError(f"target {cfg.target.name!r} has format onpu but no `npu` section",
                         hint="add target.npu.cpu_from and target.npu.execution_provider")
    return cfg.target.npu


def _npu_nodes(cfg, model: Any) -> tuple[list[Any], str]:  # noqa: ANN001 - see Format.accelerated
    """Only the NPU partition must pass the operator check: the CPU head runs any op."""
    names = set(plan_partition(model, list(_npu(cfg).cpu_from))["npu"]["nodes"])
    return [n for n in model.graph.node if n.name in names], "the NPU partition"


def _build(cfg, layout, out: Path, manifest: dict) -> dict:  # noqa: ANN001 - see Format.build
    import onnx
    from onnx.utils import extract_model

    npu = _npu(cfg)
    model = onnx.load(str(layout.quantized))
    plan = plan_partition(model, list(npu.cpu_from))
    members = {"model.onnx": layout.quantized.read_bytes()}
    with tempfile.TemporaryDirectory() as tmp:
        parts = [("npu", plan["npu"])] + ([("cpu", plan["cpu"])] if plan["cpu"]["nodes"] else [])
        for part, spec in parts:
            path = Path(tmp) / f"{part}.onnx"
            extract_model(str(layout.quantized), str(path), spec["inputs"], spec["outputs"], check_model=True)
            members[f"{part}.onnx"] = path.read_bytes()
    header = {"format": "onpu", "version": ONPU_VERSION, "execution_provider": npu.execution_provider,
              "partition": plan}
    # The manifest travels inside the container too (all but the container's own hash and size).
    members["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    write_container(out, members, header)
    return {"partition": {"npu_nodes": len(plan["npu"]["nodes"]), "cpu_nodes": len(plan["cpu"]["nodes"]),
                          "cut": plan["cpu"]["inputs"], "cut_dtypes": plan["cut_dtypes"]}}


FORMATS.register("onpu")(Format("onpu", _build, ("torch", "onnx", "onnxsim", "onnxruntime"), accelerated=_npu_nodes))
