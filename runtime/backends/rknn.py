"""``.rknn`` backend: rknn-toolkit-lite2 (``rknnlite``) on a Rockchip board's NPU.

An .rknn file is compiled for one NPU and cannot run on a PC: the build's evaluate stage checks
it in the toolkit's simulator instead (``python -m stages.evaluate target=<rk target>``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import BackendUnavailable, RuntimeLoadError
from ..manifest import Manifest, TensorSpec

INSTALL = "pip install rknn-toolkit-lite2==2.5.0 (aarch64 wheels on PyPI; the board image must provide librknnrt.so)"


def data_format(spec: TensorSpec) -> str:
    """The one rule for what ``inference(data_format=...)`` is told, on the board and in the build's
    simulator alike: the manifest's layout of the input (the build feeds NHWC uint8 pixels)."""
    return "nhwc" if (spec.layout or "NCHW").upper() == "NHWC" else "nchw"


def check_outputs(outputs: list[np.ndarray], specs: tuple[TensorSpec, ...], path: object) -> None:
    """rknn-toolkit-lite2 has no I/O query, so a model's outputs are checked against the manifest when
    they first come back: their count, and each one's element count where the manifest fixes it (the
    NPU may hand back another layout of the same tensor, so the shape itself is not compared)."""
    if len(outputs) != len(specs):
        raise RuntimeLoadError(f"{path} returned {len(outputs)} output(s); its manifest declares {len(specs)}: "
                               f"{[s.describe() for s in specs]}: rebuild the artifact and its manifest together")
    for out, spec in zip(outputs, specs):
        dims = [d for d in spec.shape if isinstance(d, int) and d > 0]
        if len(dims) == len(spec.shape) and int(np.prod(dims)) != int(np.asarray(out).size):
            raise RuntimeLoadError(f"{path}: output {spec.name!r} has {np.asarray(out).size} values "
                                   f"(shape {list(np.shape(out))}); its manifest declares {spec.describe()}: "
                                   "rebuild the artifact and its manifest together")


class RknnLiteBackend:
    def __init__(self, rknn: object, platform: str, manifest: Manifest, path: object = "the .rknn model") -> None:
        self._rknn = rknn
        self._inputs = manifest.inputs
        self._outputs = manifest.outputs
        self._path = path
        self._checked = False
        self.name = f"rknnlite:{platform}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        formats = {data_format(spec) for spec in self._inputs}
        if len(formats) != 1:
            raise RuntimeLoadError(f"inputs {[s.describe() for s in self._inputs]} mix layouts; rknnlite takes one")
        outputs = self._rknn.inference(inputs=[feeds[spec.name] for spec in self._inputs],  # type: ignore[attr-defined]
                                       data_format=formats.pop())
        if outputs is None:
            raise RuntimeLoadError("rknnlite inference returned None; see the RKNN log above")
        if not self._checked:
            check_outputs(outputs, self._outputs, self._path)
            self._checked = True
        return outputs


def open_rknn(path: Path, manifest: Manifest, providers: list[str] | None = None,
              threads: int | None = None) -> RknnLiteBackend:
    platform = manifest.raw.get("config", {}).get("target", {}).get("rknn", {}).get("platform", "?")
    try:
        from rknnlite.api import RKNNLite  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailable(
            f"{path} is an RKNN model for {platform}: it runs on that board's NPU, with rknn-toolkit-lite2 "
            f"({INSTALL}), or in the build's simulator: "
            f"python -m stages.evaluate model={manifest.model} target={manifest.target}") from None
    rknn = RKNNLite()
    if rknn.load_rknn(str(path)) != 0 or rknn.init_runtime() != 0:
        raise RuntimeLoadError(f"rknnlite could not load or start {path} (see the RKNN log above)")
    return RknnLiteBackend(rknn, platform, manifest, path)
