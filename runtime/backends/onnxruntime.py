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


def open_onnx(path: Path, manifest: Manifest, providers: list[str] | None = None,
              threads: int | None = None) -> OrtBackend:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
    wanted = providers or manifest.runtime.get("providers") or ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = manifest.threads(threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise RuntimeLoadError(f"onnxruntime could not open {path}: {exc}") from None
    return OrtBackend(session, session.get_providers()[0])
