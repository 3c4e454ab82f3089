"""``.pt`` backend: TorchScript. The one backend that imports torch (as a Pi 4 runs it: qnnpack)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import BackendUnavailable, RuntimeLoadError
from ..manifest import Manifest


class TorchScriptBackend:
    def __init__(self, module: object, torch: object, engine: str) -> None:
        self._module = module
        self._torch = torch
        self.name = f"torchscript:{engine}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.no_grad():  # type: ignore[attr-defined]
            out = self._module(*(torch.from_numpy(v) for v in feeds.values()))  # type: ignore[attr-defined,operator]
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.numpy() for o in outs]


def open_torchscript(path: Path, manifest: Manifest, providers: list[str] | None = None,
                     threads: int | None = None) -> TorchScriptBackend:
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(f"{path} is TorchScript: pip install torch (on a Pi: the aarch64 CPU wheel)") from None
    engine = (manifest.raw.get("torch") or {}).get("quantized_engine")
    if engine:
        if engine not in torch.backends.quantized.supported_engines:
            raise BackendUnavailable(f"{path} needs the {engine} quantized engine, this torch has "
                                     f"{torch.backends.quantized.supported_engines}")
        torch.backends.quantized.engine = engine
    torch.set_num_threads(manifest.threads(threads))
    manifest.check_backend_version("torch", torch.__version__.split("+")[0])
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as exc:  # torch raises RuntimeError for a bad archive
        raise RuntimeLoadError(f"torch could not load {path} as TorchScript ({str(exc).strip().splitlines()[0]}); "
                               "rebuild it or copy it again with its manifest") from None
    return TorchScriptBackend(module, torch, engine or "fp32")
