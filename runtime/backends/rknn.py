"""``.rknn`` backend: rknn-toolkit-lite2 (``rknnlite``) on a Rockchip board's NPU.

An .rknn file is compiled for one NPU and cannot run on a PC: the build's evaluate stage checks
it in the toolkit's simulator instead (``python -m stages.evaluate target=<rk target>``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import BackendUnavailable, RuntimeLoadError
from ..manifest import Manifest


class RknnLiteBackend:
    def __init__(self, rknn: object, platform: str) -> None:
        self._rknn = rknn
        self.name = f"rknnlite:{platform}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self._rknn.inference(inputs=list(feeds.values()), data_format="nchw")  # type: ignore[attr-defined]
        if outputs is None:
            raise RuntimeLoadError("rknnlite inference returned None; see the RKNN log above")
        return outputs


def open_rknn(path: Path, manifest: Manifest, providers: list[str] | None = None,
              threads: int | None = None) -> RknnLiteBackend:
    platform = manifest.raw.get("config", {}).get("target", {}).get("rknn", {}).get("platform", "?")
    try:
        from rknnlite.api import RKNNLite  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailable(
            f"{path} is an RKNN model for {platform}: it runs only on that board, with rknn-toolkit-lite2 "
            "(pip install rknn_toolkit_lite2 on the board, from Rockchip's rknn-toolkit2 release), or in the "
            f"build's simulator: python -m stages.evaluate model={manifest.model} target={manifest.target}") from None
    rknn = RKNNLite()
    if rknn.load_rknn(str(path)) != 0 or rknn.init_runtime() != 0:
        raise RuntimeLoadError(f"rknnlite could not load or start {path} (see the RKNN log above)")
    return RknnLiteBackend(rknn, platform)
