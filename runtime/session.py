"""``load(path)``: one entry point for every artifact format, chosen by the manifest's format."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from .errors import InputSpecError, RuntimeLoadError
from .manifest import MANIFEST_NAME, Manifest, TensorSpec, verify


class Backend(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


# manifest format -> "module:function" that opens the artifact (imported only when needed)
BACKENDS: dict[str, str] = {
    "onnx": "runtime.backends.onnxruntime:open_onnx",
    "onpu": "runtime.backends.onpu:open_onpu",
    "rknn": "runtime.backends.rknn:open_rknn",
    "rknn_v1": "runtime.backends.rknn:open_rknn",
    "tensorrt": "runtime.backends.tensorrt:open_engine",
    "torchscript": "runtime.backends.torchscript:open_torchscript",
}


class Session:
    """A verified artifact, ready to run. Inputs are checked against the manifest's specs."""

    def __init__(self, path: Path, manifest: Manifest, backend: Backend) -> None:
        self.path = path
        self.manifest = manifest
        self.backend = backend
        self._labels_checked = False  # a free class dimension's label count: checked on the first run

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.outputs

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.outputs[0].labels

    def _check_label_count(self, results: list) -> None:
        """Labels for an output whose class dimension is free in the manifest (the schema counts them when
        it is fixed): the first run's output must have as many classes as the manifest has labels. Once per
        session: the model's class count does not change between runs."""
        if self._labels_checked:
            return
        for spec, value in zip(self.outputs, results):
            if not spec.labels or not spec.shape:
                continue
            axis = 1 if len(spec.shape) > 1 else 0
            shape = np.shape(value)
            classes = shape[axis] if len(shape) > axis else None
            if not isinstance(spec.shape[axis], int) and classes != len(spec.labels):
                raise RuntimeLoadError(f"{self.path}: output {spec.name!r} has {classes} classes but the manifest "
                                       f"has {len(spec.labels)} labels for it; the manifest is from another build")
        self._labels_checked = True

    def preprocess(self, image: Any, input_index: int = 0) -> np.ndarray:
        """An RGB image (PIL or HxWx3 uint8) -> the model's input tensor, as the manifest says."""
        return self.manifest.preprocessor(input_index)(image)

    def run(self, x: np.ndarray | Mapping[str, np.ndarray],
            check_finite: bool = True) -> np.ndarray | dict[str, np.ndarray]:
        """One array in, the first output out; or a dict of inputs in, a dict of outputs out.
        ``check_finite``: refuse NaN or Inf in float inputs (one np.isfinite pass) instead of returning
        a confident answer computed from them."""
        single = not isinstance(x, Mapping)
        feeds = {self.inputs[0].name: x} if single else dict(x)
        for spec in self.inputs:
            check_input(spec, feeds.get(spec.name), check_finite)
        unknown = set(feeds) - {s.name for s in self.inputs}
        if unknown:
            raise InputSpecError(f"unknown input(s) {sorted(unknown)}; expected {[s.describe() for s in self.inputs]}")
        results = self.backend.run(feeds)
        self._check_label_count(results)
        if single:
            return results[0]
        return {spec.name: value for spec, value in zip(self.outputs, results)}


def check_input(spec: TensorSpec, value: Any, check_finite: bool = True) -> None:
    if value is None:
        raise InputSpecError(f"missing input {spec.name!r}; expected {spec.describe()}")
    if not isinstance(value, np.ndarray):
        raise InputSpecError(f"input {spec.name!r} must be a numpy array, got {type(value).__name__}; "
                             f"expected {spec.describe()}")
    if value.dtype != np.dtype(spec.dtype):
        raise InputSpecError(f"input {spec.name!r} has dtype {value.dtype}, expected {spec.describe()}")
    if len(value.shape) != len(spec.shape) or any(
            isinstance(d, int) and d > 0 and d != v for d, v in zip(spec.shape, value.shape)):
        raise InputSpecError(f"input {spec.name!r} has shape {list(value.shape)}, expected {spec.describe()}")
    if check_finite and value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = int(value.size - np.isfinite(value).sum())
        raise InputSpecError(f"input {spec.name!r} has {bad} NaN or infinite value(s); fix the input "
                             "(or pass check_finite=False to run it anyway)")


REFERENCE_FORMATS = ("onnx", "onpu")  # formats whose graph has reference semantics apart from its kernels


def load(path: str | Path, providers: list[str] | None = None, threads: int | None = None,
         reference: bool = False) -> Session:
    """Open an artifact next to its manifest.json, verify its sha256, and start its backend.

    ``reference=True`` (QDQ ONNX formats only) runs the graph with optimizations off: quantize and
    dequantize as written, no fused INT8 kernels, so the result does not depend on this CPU's ISA."""
    path = Path(path)
    if not path.exists() and not (path.parent / MANIFEST_NAME).exists():
        raise RuntimeLoadError(f"no artifact at {path}: give the path of a built artifact (model.<ext>, with the "
                               "manifest.json the build wrote beside it)")
    manifest = Manifest.read(path.parent / MANIFEST_NAME)
    if manifest.artifact != path.name:
        raise RuntimeLoadError(f"manifest in {path.parent} describes {manifest.artifact!r}, not {path.name!r}")
    verify(path, manifest)
    target = BACKENDS.get(manifest.format)
    if target is None:
        raise RuntimeLoadError(f"no runtime backend for format {manifest.format!r} ({path}); "
                               f"this runtime knows: {', '.join(sorted(BACKENDS))}")
    if reference and manifest.format not in REFERENCE_FORMATS:
        raise RuntimeLoadError(f"{path}: reference semantics are defined for {', '.join(REFERENCE_FORMATS)} "
                               f"artifacts; a {manifest.format!r} artifact runs only as its backend computes it")
    module_name, _, func = target.partition(":")
    opener = getattr(importlib.import_module(module_name), func)
    options = {"reference": True} if reference else {}
    return Session(path, manifest, opener(path, manifest, providers=providers, threads=threads, **options))
