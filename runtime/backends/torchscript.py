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
    backend = TorchScriptBackend(module, torch, engine or "fp32")
    check_io(path, manifest, backend, module)
    return backend


def check_io(path: Path, manifest: Manifest, backend: TorchScriptBackend, module: object) -> None:
    """A TorchScript archive declares no tensor shapes: its forward's arity is checked against the
    manifest's inputs, and one run on zeros of the declared inputs must give the declared outputs
    (count, dtype, rank, fixed sizes). Costs one inference at load."""
    arguments = [a for a in module.forward.schema.arguments if a.name != "self"]  # type: ignore[attr-defined]
    if len(arguments) != len(manifest.inputs):
        raise RuntimeLoadError(f"{path}: the model's forward takes {len(arguments)} input(s), the manifest declares "
                               f"{len(manifest.inputs)}; the manifest is from another build")
    feeds = {spec.name: np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], spec.dtype)
             for spec in manifest.inputs}
    try:
        outputs = backend.run(feeds)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeLoadError(f"{path}: the model rejects the manifest's inputs "
                               f"({', '.join(s.describe() for s in manifest.inputs)}): {first}; "
                               "the manifest is from another build") from None
    if len(outputs) != len(manifest.outputs):
        raise RuntimeLoadError(f"{path}: the model returns {len(outputs)} output(s), the manifest declares "
                               f"{len(manifest.outputs)}; the manifest is from another build")
    for spec, out in zip(manifest.outputs, outputs):
        fixed = [(d, m) for d, m in zip(spec.shape, out.shape) if isinstance(d, int)]
        if str(out.dtype) != spec.dtype or out.ndim != len(spec.shape) or any(d != m for d, m in fixed):
            raise RuntimeLoadError(f"{path}: output {spec.name!r} is {out.dtype}{list(out.shape)} in the model but "
                                   f"{spec.describe()} in the manifest; the manifest is from another build")
