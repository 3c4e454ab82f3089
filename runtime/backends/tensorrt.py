"""``.engine`` backend: a serialized TensorRT engine, on the GPU it was built for.

Written against TensorRT's Python API as documented for 8.5, 8.6 (JetPack 5.1 / 6.0) and 10.x: the
name-based tensor API (``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), which exists from 8.5 on. Never run here: the build
machine has no GPU and TensorRT does not install (README, Jetson). Buffers go through cuda-python's
runtime API (``pip install cuda-python``; JetPack ships TensorRT's bindings as system packages, so the
venv needs ``--system-site-packages``), not PyTorch.

Device buffers and the stream are made once per input shape and reused; each call copies inputs
asynchronously on the stream, runs, copies outputs back, and synchronizes the stream once. Engines
with dynamic input dimensions get each call's input shapes (``set_input_shape``) before the output
shapes are read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import BackendUnavailable, RuntimeLoadError
from ..manifest import Manifest


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeLoadError(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTBackend:
    def __init__(self, engine: Any, cudart: Any, trt: Any) -> None:
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeLoadError("TensorRT could not create an execution context (out of GPU memory?)")
        self._cudart = cudart
        self._trt = trt
        self._stream = _check(cudart.cudaStreamCreate())
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._shapes: tuple = ()
        self._device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._host_out: dict[str, np.ndarray] = {}
        self.name = f"tensorrt:{trt.__version__}"

    def _allocate(self, feeds: Mapping[str, np.ndarray]) -> None:
        """(Re)make device buffers for these input shapes: once, unless the shapes change."""
        engine, context, cudart, trt = self._engine, self._context, self._cudart, self._trt
        shapes = tuple(tuple(feeds[n].shape) for n in self._inputs)
        if shapes == self._shapes:
            return
        self._free()
        for name in self._inputs:
            if -1 in tuple(engine.get_tensor_shape(name)):  # dynamic: this call's shape
                if not context.set_input_shape(name, tuple(feeds[name].shape)):
                    raise RuntimeLoadError(f"input {name!r}: shape {list(feeds[name].shape)} is outside the "
                                           "engine's optimization profile")
        for name in self._inputs + self._outputs:
            shape = tuple(context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            pointer = _check(cudart.cudaMalloc(max(nbytes, 1)))
            self._device[name] = (pointer, nbytes)
            context.set_tensor_address(name, pointer)
            if name in self._outputs:
                self._host_out[name] = np.empty(shape, dtype)
        self._shapes = shapes

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        cudart = self._cudart
        self._allocate(feeds)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = {name: np.ascontiguousarray(feeds[name]) for name in self._inputs}  # alive until the sync
        for name, host in hosts.items():
            pointer, nbytes = self._device[name]
            _check(cudart.cudaMemcpyAsync(pointer, host.ctypes.data, nbytes, h2d, self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeLoadError("TensorRT execution failed (see the TensorRT log above)")
        for name in self._outputs:
            pointer, nbytes = self._device[name]
            _check(cudart.cudaMemcpyAsync(self._host_out[name].ctypes.data, pointer, nbytes, d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return [self._host_out[name].copy() for name in self._outputs]

    def _free(self) -> None:
        for pointer, _ in self._device.values():
            self._cudart.cudaFree(pointer)
        self._device.clear()
        self._host_out.clear()
        self._shapes = ()

    def __del__(self) -> None:
        try:
            self._free()
            self._cudart.cudaStreamDestroy(self._stream)
        except Exception:  # noqa: BLE001 - interpreter shutdown: the CUDA context goes with the process
            pass


def gpu_name(cudart: Any, device: int = 0) -> str:
    """The GPU's name from the CUDA runtime (cudaGetDeviceProperties), not from PyTorch."""
    props = _check(cudart.cudaGetDeviceProperties(device))
    name = props.name
    return (name.decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)).rstrip("\x00")


def open_engine(path: Path, manifest: Manifest, providers: list[str] | None = None,
                threads: int | None = None) -> TensorRTBackend:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailable(
            f"{path} is a TensorRT engine: it runs only where TensorRT, cuda-python and a CUDA GPU are installed "
            "(a Jetson with JetPack: make the venv with `python3 -m venv --system-site-packages` so it sees "
            "JetPack's TensorRT bindings, then pip install cuda-python)") from None
    built_with = manifest.raw.get("tensorrt", {}).get("version")
    if built_with and built_with != trt.__version__:
        raise RuntimeLoadError(f"{path} was built with TensorRT {built_with}, this is {trt.__version__}: "
                               "engines are specific to the TensorRT version and GPU; rebuild it here")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise RuntimeLoadError(f"TensorRT could not deserialize {path}; rebuild it on this device")
    check_io(path, manifest, engine, trt)
    return TensorRTBackend(engine, cudart, trt)


def check_io(path: Path, manifest: Manifest, engine: Any, trt: Any) -> None:
    """The engine's I/O tensors against the manifest's, before any GPU buffer is made: the same names, each
    one's direction, dtype and rank, and every fixed size (a dynamic engine dimension, -1, matches any)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for kind, specs, mode in (("input", manifest.inputs, trt.TensorIOMode.INPUT),
                              ("output", manifest.outputs, trt.TensorIOMode.OUTPUT)):
        found = [n for n in names if engine.get_tensor_mode(n) == mode]
        if sorted(found) != sorted(s.name for s in specs):
            raise RuntimeLoadError(f"{path}: the engine's {kind}s are {found}, the manifest declares "
                                   f"{[s.name for s in specs]}; the manifest is from another build")
        for spec in specs:
            shape = tuple(int(d) for d in engine.get_tensor_shape(spec.name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(spec.name)))
            fixed = [(d, e) for d, e in zip(spec.shape, shape) if isinstance(d, int) and e != -1]
            if str(dtype) != spec.dtype or len(shape) != len(spec.shape) or any(d != e for d, e in fixed):
                raise RuntimeLoadError(f"{path}: {kind} {spec.name!r} is {dtype}{list(shape)} in the engine but "
                                       f"{spec.describe()} in the manifest; the manifest is from another build")
