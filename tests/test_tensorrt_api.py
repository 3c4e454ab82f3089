"""The TensorRT paths cannot run here (no GPU, no TensorRT: README, Jetson). These tests hold them to
TensorRT's documented Python API (8.5, 8.6, 10.x) and cuda-python's runtime API with recording fakes:
explicit-batch networks on 8.x, input shapes set for dynamic engines, device buffers made once and
reused, asynchronous copies on one stream, the GPU name from the CUDA runtime."""
import types

import numpy as np
import pytest

from runtime.backends.tensorrt import TensorRTBackend, gpu_name
from stages.formats.tensorrt import explicit_batch_flags


class FakeCudart:
    class cudaMemcpyKind:  # noqa: N801 - cuda-python's names
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self):
        self.calls, self.next = [], 1000

    def _log(self, *call):
        self.calls.append(call)
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        self.calls.append(("cudaStreamCreate",))
        return 0, "stream"

    def cudaMalloc(self, nbytes):  # noqa: N802
        self.next += 1
        self.calls.append(("cudaMalloc", nbytes))
        return 0, self.next

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        return self._log("cudaMemcpyAsync", kind, nbytes, stream)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return self._log("cudaStreamSynchronize", stream)

    def cudaFree(self, pointer):  # noqa: N802
        return self._log("cudaFree", pointer)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return self._log("cudaStreamDestroy", stream)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        return 0, types.SimpleNamespace(name=b"Orin (nvgpu)\x00\x00")


class FakeTrt:
    __version__ = "8.6.2"

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    @staticmethod
    def nptype(dtype):
        return np.float32


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, input_shape):
        self.input_shape, self.context = input_shape, FakeContext(input_shape)

    def get_tensor_name(self, i):
        return ["input", "logits"][i]

    def get_tensor_mode(self, name):
        return "in" if name == "input" else "out"

    def get_tensor_shape(self, name):
        return self.input_shape if name == "input" else (1, 4)

    def get_tensor_dtype(self, name):
        return "float"

    def create_execution_context(self):
        return self.context


class FakeContext:
    def __init__(self, shape):
        self.shapes, self.calls = {"input": shape, "logits": (1, 4)}, []

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, shape))
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def set_tensor_address(self, name, pointer):
        self.calls.append(("set_tensor_address", name))

    def execute_async_v3(self, stream):
        self.calls.append(("execute_async_v3", stream))
        return True


@pytest.mark.parametrize("dynamic", [False, True])
def test_buffers_are_made_once_and_copies_run_on_one_stream(dynamic):
    cudart = FakeCudart()
    engine = FakeEngine((-1, 3, 8, 8) if dynamic else (1, 3, 8, 8))
    backend = TensorRTBackend(engine, cudart, FakeTrt())
    x = {"input": np.zeros((1, 3, 8, 8), np.float32)}
    for _ in range(3):
        out = backend.run(x)
    assert out[0].shape == (1, 4)
    assert [c for c in cudart.calls if c[0] == "cudaMalloc"] == [("cudaMalloc", 768), ("cudaMalloc", 16)]  # once
    copies = [c for c in cudart.calls if c[0] == "cudaMemcpyAsync"]
    assert len(copies) == 6 and all(c[3] == "stream" for c in copies)
    assert [c for c in engine.context.calls if c[0] == "execute_async_v3"] == [("execute_async_v3", "stream")] * 3
    shapes_set = [c for c in engine.context.calls if c[0] == "set_input_shape"]
    assert shapes_set == ([("set_input_shape", "input", (1, 3, 8, 8))] if dynamic else [])
    backend.run({"input": np.zeros((2, 3, 8, 8), np.float32)})  # a new shape: new buffers
    assert len([c for c in cudart.calls if c[0] == "cudaMalloc"]) == 4


def test_network_is_explicit_batch_on_tensorrt_8_and_default_on_10():
    trt8 = types.SimpleNamespace(__version__="8.5.2", NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0))
    assert explicit_batch_flags(trt8) == 1
    assert explicit_batch_flags(types.SimpleNamespace(__version__="10.3.0")) == 0


def test_gpu_name_comes_from_the_cuda_runtime():
    assert gpu_name(FakeCudart()) == "Orin (nvgpu)"


def _manifest(input_shape, output_name="logits", dtype="float32"):
    from runtime.manifest import Manifest, TensorSpec

    return Manifest(format="tensorrt", artifact="model.engine", sha256="0" * 64, model="m", target="jetson_orin",
                    quant="q", task="classification", inputs=(TensorSpec("input", tuple(input_shape), dtype),),
                    outputs=(TensorSpec(output_name, (1, 4), "float32"),))


def test_an_engine_whose_io_is_not_the_manifests_fails_at_load_naming_both():
    from pathlib import Path

    from runtime.backends.tensorrt import check_io
    from runtime.errors import RuntimeLoadError

    engine = FakeEngine((-1, 3, 8, 8))
    check_io(Path("m.engine"), _manifest((1, 3, 8, 8)), engine, FakeTrt())  # -1 in the engine matches any size
    check_io(Path("m.engine"), _manifest(("batch", 3, 8, 8)), engine, FakeTrt())
    with pytest.raises(RuntimeLoadError, match=r"input 'input' is float32\[-1, 3, 8, 8\] in the engine but "
                                               r"input: float32\[1, 3, 16, 16\] in the manifest"):
        check_io(Path("m.engine"), _manifest((1, 3, 16, 16)), engine, FakeTrt())
    with pytest.raises(RuntimeLoadError, match=r"the engine's outputs are \['logits'\], the manifest declares \['scores'\]"):
        check_io(Path("m.engine"), _manifest((1, 3, 8, 8), output_name="scores"), engine, FakeTrt())
    with pytest.raises(RuntimeLoadError, match=r"input 'input' is float32\[-1, 3, 8, 8\] in the engine but input: uint8"):
        check_io(Path("m.engine"), _manifest((1, 3, 8, 8), dtype="uint8"), engine, FakeTrt())
