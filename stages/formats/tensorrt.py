"""``tensorrt``: a serialized TensorRT engine (.engine) for a Jetson, from TensorRT-ready QDQ ONNX.

Engines are specific to the GPU and the TensorRT version, so they are built where TensorRT runs
(usually the Jetson itself). Everywhere else, prepare() leaves the QDQ ONNX and the build
settings in prepared/, and the convert stage stops with the command to finish on the device.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from stages.core.errors import BuildError

from . import FORMATS, Format


def _settings(cfg) -> dict:  # noqa: ANN001
    trt_cfg = cfg.target.tensorrt
    if trt_cfg is None:
        raise BuildError(f"target {cfg.target.name!r} has format tensorrt but no `tensorrt` section",
                         hint="add target.tensorrt (fp16, int8, workspace_mb)")
    return {"fp16": trt_cfg.fp16, "int8": trt_cfg.int8, "workspace_mb": trt_cfg.workspace_mb,
            "timing_cache": trt_cfg.timing_cache}


def _trtexec_command(prepared: Path, settings: dict) -> str:
    flags = " ".join(f for f, on in (("--fp16", settings["fp16"]), ("--int8", settings["int8"])) if on)
    return (f"trtexec --onnx={prepared / 'model.onnx'} {flags} "
            f"--memPoolSize=workspace:{settings['workspace_mb']}M --saveEngine=model.engine")


def _prepare(cfg, layout) -> list[Path]:  # noqa: ANN001
    settings = _settings(cfg)
    layout.prepared_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = layout.prepared_dir / "model.onnx"
    shutil.copyfile(layout.quantized, onnx_path)
    build_json = layout.prepared_dir / "tensorrt.json"
    relative = layout.prepared_dir.relative_to(layout.root.parent)  # no machine paths in build outputs
    build_json.write_text(json.dumps({**settings, "trtexec": _trtexec_command(relative, settings),
                                      "on_device": f"python -m stages.convert model={cfg.model.name} "
                                                   f"target={cfg.target.name}"}, indent=2) + "\n")
    return [onnx_path, build_json]


def _unavailable(cfg) -> Optional[str]:  # noqa: ANN001
    try:
        import tensorrt  # noqa: F401  # type: ignore[import-not-found]
    except ImportError:
        return ("TensorRT is not importable here (PyPI's tensorrt wheels fetch their libraries from NVIDIA's "
                "own index, and an engine is specific to the GPU it is built on). On the Jetson (JetPack ships "
                f"TensorRT) run `python -m stages.convert model={cfg.model.name} target={cfg.target.name}`, "
                "or use the trtexec command in prepared/tensorrt.json")
    return None


def _build(cfg, layout, out: Path, manifest: dict) -> dict:  # noqa: ANN001 - see Format.build
    import tensorrt as trt  # type: ignore[import-not-found]

    settings = _settings(cfg)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(explicit_batch_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(layout.quantized.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {layout.quantized}: {errors}",
                         hint="check the node named above; a rewrite may be needed for this TensorRT version")
    config = builder.create_builder_config()
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:  # one profile at the model's own input shape (free dims: the size the build used)
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            shape = tuple(cfg.model.input.shape)
            profile.set_shape(tensor.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_mb"] << 20)
    if settings["fp16"]:
        config.set_flag(trt.BuilderFlag.FP16)
    if settings["int8"]:
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
    cache_path = Path(settings["timing_cache"]) if settings["timing_cache"] else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise BuildError("TensorRT failed to build the engine (see its log above)",
                         hint="try target.tensorrt.workspace_mb larger, or fp16 only")
    out.write_bytes(bytes(engine))
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt": {"version": trt.__version__, "gpu": _gpu_name(), **settings}}


def explicit_batch_flags(trt) -> int:  # noqa: ANN001
    """TensorRT 8.x's ONNX parser needs an explicit-batch network (flag 0 is implicit batch, which it
    rejects); from 10.0 explicit batch is the only kind and the flag is deprecated."""
    if int(trt.__version__.split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _gpu_name() -> str:
    """From the CUDA runtime (cuda-python), as the runtime backend does: no PyTorch on a Jetson needed."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        from runtime.backends.tensorrt import gpu_name
    except ImportError:
        return "unknown (cuda-python not installed)"
    return gpu_name(cudart)


FORMATS.register("tensorrt")(Format("engine", _build, ("torch", "onnx", "onnxruntime", "tensorrt", "cuda-python"),
                                    prepare=_prepare, unavailable=_unavailable))
