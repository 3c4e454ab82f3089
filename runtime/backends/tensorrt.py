"""``.engine`` backend: a serialized TensorRT engine, on the GPU it was built for.

Buffers go through cuda-python's runtime API (``pip install cuda-python``; JetPack ships it),
not PyTorch: the TorchScript backend is the only one allowed that dependency. Not exercised on the build machine,
which has no GPU; the engine's TensorRT version is checked against the manifest before loading.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import BackendUnavailable, RuntimeLoadError
from ..manifest import Manifest


def _check(result: Any) -> Any:
    err, *rest = result
    if int(err) != 0:
        raise RuntimeLoadError(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTBackend:
    def __init__(self, engine: Any, cudart: Any, trt: Any) -> None:
        self._engine = engine
        self._context = engine.create_execution_context()
        self._cudart = cudart
        self._trt = trt
        self.name = f"tensorrt:{trt.__version__}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        cudart, engine, context, trt = self._cudart, self._engine, self._context, self._trt
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        buffers, outputs = [], []
        try:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    host = np.ascontiguousarray(feeds[name])
                else:
                    dtype = trt.nptype(engine.get_tensor_dtype(name))
                    host = np.empty(tuple(context.get_tensor_shape(name)), dtype=dtype)
                    outputs.append(host)
                device = _check(cudart.cudaMalloc(host.nbytes))
                buffers.append((device, host, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT))
                context.set_tensor_address(name, device)
            for device, host, is_input in buffers:
                if is_input:
                    _check(cudart.cudaMemcpy(device, host.ctypes.data, host.nbytes, h2d))
            if not context.execute_async_v3(0):
                raise RuntimeLoadError("TensorRT execution failed")
            _check(cudart.cudaDeviceSynchronize())
            for device, host, is_input in buffers:
                if not is_input:
                    _check(cudart.cudaMemcpy(host.ctypes.data, device, host.nbytes, d2h))
        finally:
            for device, _, _ in buffers:
                cudart.cudaFree(device)
        return outputs


def open_engine(path: Path, manifest: Manifest, providers: list[str] | None = None,
                threads: int | None = None) -> TensorRTBackend:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailable(
            f"{path} is a TensorRT engine: it runs only where TensorRT, cuda-python and a CUDA GPU are "
            "installed (a Jetson with JetPack, plus pip install cuda-python)") from None
    built_with = manifest.raw.get("tensorrt", {}).get("version")
    if built_with and built_with != trt.__version__:
        raise RuntimeLoadError(f"{path} was built with TensorRT {built_with}, this is {trt.__version__}: "
                               "engines are specific to the TensorRT version and GPU; rebuild it here")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise RuntimeLoadError(f"TensorRT could not deserialize {path}; rebuild it on this device")
    return TensorRTBackend(engine, cudart, trt)
