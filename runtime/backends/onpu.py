"""``.onpu`` backend: verify the container, then run the NPU partition on the NPU's ONNX Runtime
execution provider and the head on the CPU, or the whole graph on the CPU when no NPU provider
is registered on this machine. ``backend.name`` says which happened.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import RuntimeLoadError
from ..manifest import Manifest


def read_container(path: Path) -> tuple[dict, dict[str, bytes]]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {name: zf.read(name) for name in zf.namelist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise RuntimeLoadError(f"{path} is not a readable .onpu container ({exc}); rebuild it") from None
    try:
        header = json.loads(members.pop("onpu.json").decode("utf-8"))
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        raise RuntimeLoadError(f"{path} has no valid onpu.json header (missing, not UTF-8 or not JSON); rebuild it") from None
    if not isinstance(header, dict) or header.get("format") != "onpu" or header.get("version") != 1:
        found = (header.get("format"), header.get("version")) if isinstance(header, dict) else type(header).__name__
        raise RuntimeLoadError(f"{path}: unsupported onpu header {found!r}; this runtime reads onpu v1")
    hashes = header.get("members")
    # Every member is covered by a hash: an empty or partial table would switch the check off.
    if not isinstance(hashes, dict) or set(hashes) != set(members):
        raise RuntimeLoadError(f"{path}: onpu.json's member hashes {sorted(hashes) if isinstance(hashes, dict) else hashes!r} "
                               f"do not cover the container's members {sorted(members)}; rebuild the artifact")
    for name, digest in hashes.items():
        if hashlib.sha256(members[name]).hexdigest() != digest:
            raise RuntimeLoadError(f"{path}: member {name!r} is corrupt; rebuild the artifact")
    for key, kind in (("partition", dict), ("execution_provider", str)):
        if not isinstance(header.get(key), kind):
            raise RuntimeLoadError(f"{path}: onpu.json lacks {key!r} ({kind.__name__}); rebuild the artifact")
    if "model.onnx" not in members:
        raise RuntimeLoadError(f"{path}: the container has no model.onnx; rebuild the artifact")
    return header, members


class OnpuBackend:
    def __init__(self, stages: list[tuple[object, list[str]]], name: str) -> None:
        self._stages = stages
        self.name = name

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        values = dict(feeds)
        outputs: list[np.ndarray] = []
        for session, output_names in self._stages:
            wanted = {i.name for i in session.get_inputs()}  # type: ignore[attr-defined]
            outputs = session.run(output_names, {k: v for k, v in values.items() if k in wanted})  # type: ignore[attr-defined]
            values.update(zip(output_names, outputs))
        return outputs


class _Partitioned:
    """The partitioned graph as check_io sees a session: the first part's inputs (the model's; the CPU
    part reads what the NPU part hands over) and the outputs the last part computes."""

    def __init__(self, stages: list[tuple[object, list[str]]]) -> None:
        self._first, (self._last, self._names) = stages[0][0], stages[-1]

    def get_inputs(self) -> list:
        return self._first.get_inputs()  # type: ignore[attr-defined]

    def get_outputs(self) -> list:
        return [o for o in self._last.get_outputs() if o.name in self._names]  # type: ignore[attr-defined]


def open_onpu(path: Path, manifest: Manifest, providers: list[str] | None = None,
              threads: int | None = None, reference: bool = False) -> OnpuBackend:
    from .onnxruntime import check_io, import_ort, session_options

    ort = import_ort(manifest)
    header, members = read_container(path)
    try:
        inner = json.loads(members.get("manifest.json", b"{}").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        inner = None
    if not isinstance(inner, dict):
        raise RuntimeLoadError(f"{path}: the manifest.json inside the container is not a JSON object; rebuild the artifact")
    mismatched = [k for k, v in inner.items() if k in manifest.raw and manifest.raw[k] != v]
    if mismatched:
        raise RuntimeLoadError(f"{path}: the manifest inside the container disagrees with the one beside it "
                               f"on {mismatched}; copy the artifact and its manifest.json from the same build")
    options = session_options(ort, manifest, threads, reference)
    npu_ep = header["execution_provider"]
    available = ort.get_available_providers()
    plan = header["partition"]

    def session(member: str, chosen: list[str]) -> object:
        try:
            return ort.InferenceSession(members[member], options, providers=chosen)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise RuntimeLoadError(f"{path}: onnxruntime could not open its member {member} ({exc}); "
                                   "rebuild the artifact") from None

    if npu_ep in available and (providers is None or npu_ep in providers) and not reference:
        if "npu.onnx" not in members:
            raise RuntimeLoadError(f"{path}: the container has no npu.onnx partition; rebuild the artifact")
        try:
            parts = [(member, plan[part]["outputs"], len(plan[part]["nodes"])) for part, member in
                     (("npu", "npu.onnx"), ("cpu", "cpu.onnx")) if member in members]
        except (KeyError, TypeError) as exc:
            raise RuntimeLoadError(f"{path}: onpu.json's partition lacks {exc}; rebuild the artifact") from None
        stages = [(session(member, [npu_ep, "CPUExecutionProvider"] if member == "npu.onnx" else ["CPUExecutionProvider"]),
                   outputs) for member, outputs, _ in parts]
        check_io(path, manifest, _Partitioned(stages))
        return OnpuBackend(stages, f"onpu:{npu_ep}({parts[0][2]} nodes)"
                                   f"+CPUExecutionProvider({sum(n for _, _, n in parts[1:])} nodes)")
    whole = session("model.onnx", ["CPUExecutionProvider"])
    check_io(path, manifest, whole)
    return OnpuBackend([(whole, [o.name for o in whole.get_outputs()])],  # type: ignore[attr-defined]
                       "onpu:CPUExecutionProvider (" + ("reference semantics: " if reference else
                       f"NPU provider {npu_ep} not registered here: ") + "whole graph on CPU)")
