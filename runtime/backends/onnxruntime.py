"""ONNX Runtime backend for .onnx artifacts."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import BackendUnavailable, RuntimeLoadError
from ..manifest import Manifest


class OrtBackend:
    def __init__(self, session: object, provider: str) -> None:
        self._session = session
        self.name = f"onnxruntime:{provider}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(feeds))  # type: ignore[attr-defined]


def session_options(ort: object, manifest: Manifest, threads: int | None, reference: bool) -> object:
    """Session options shared by .onnx and .onpu. ``reference``: graph optimizations off, so QDQ pairs run
    as written (dequantize, float op, quantize), the graph's reference semantics, free of the fused INT8
    kernels of this CPU (on x86 without VNNI those saturate 16-bit sums; ORT's quantization docs)."""
    options = ort.SessionOptions()  # type: ignore[attr-defined]
    level = ort.GraphOptimizationLevel  # type: ignore[attr-defined]
    options.graph_optimization_level = level.ORT_DISABLE_ALL if reference else level.ORT_ENABLE_ALL
    options.intra_op_num_threads = manifest.threads(threads)
    return options


def import_ort(manifest: Manifest) -> object:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime"
                                 + (f"=={manifest.toolchain_version('onnxruntime')}"
                                    if manifest.toolchain_version("onnxruntime") else "")) from None
    manifest.check_backend_version("onnxruntime", ort.__version__)
    return ort


def open_onnx(path: Path, manifest: Manifest, providers: list[str] | None = None,
              threads: int | None = None, reference: bool = False) -> OrtBackend:
    ort = import_ort(manifest)
    wanted = providers or manifest.runtime.get("providers") or ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())  # type: ignore[attr-defined]
    chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    options = session_options(ort, manifest, threads, reference)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise RuntimeLoadError(f"onnxruntime could not open {path}: {exc}") from None
    check_io(path, manifest, session)
    return OrtBackend(session, session.get_providers()[0] + (" (reference semantics)" if reference else ""))


ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(uint16)": "uint16", "tensor(int16)": "int16",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


def check_io(path: Path, manifest: Manifest, session: object) -> None:
    """The manifest's declared inputs and outputs must be the model's: names, dtypes, ranks, fixed sizes."""
    for kind, declared, actual in (("input", manifest.inputs, session.get_inputs()),  # type: ignore[attr-defined]
                                   ("output", manifest.outputs, session.get_outputs())):  # type: ignore[attr-defined]
        model = {a.name: a for a in actual}
        for spec in declared:
            got = model.get(spec.name)
            if got is None:
                raise RuntimeLoadError(f"{path}: the manifest declares {kind} {spec.name!r}, the model has "
                                       f"{sorted(model)}; the manifest is from another build")
            dtype = ORT_DTYPES.get(got.type, got.type)
            shape = list(got.shape)
            fixed = [(d, m) for d, m in zip(spec.shape, shape) if isinstance(d, int) and isinstance(m, int)]
            if dtype != spec.dtype or len(shape) != len(spec.shape) or any(d != m for d, m in fixed):
                raise RuntimeLoadError(f"{path}: {kind} {spec.name!r} is {dtype}{shape} in the model but "
                                       f"{spec.describe()} in the manifest; the manifest is from another build")
