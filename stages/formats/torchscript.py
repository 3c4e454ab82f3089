"""``torchscript``: PyTorch's own static INT8 (FX graph mode), traced, frozen and saved as a ``.pt``.

The Raspberry Pi 4 tutorial's path: the float module is quantized by PyTorch during convert (quant
scheme ``vendor``; ``layout.quantized`` is just the float ONNX, for the operator check and the
manifest's I/O specs). FX graph mode fuses Conv+BN(+ReLU) itself and works on any traceable
model, so torchvision's MobileNetV2 needs no hand-written ``fuse_model``; eager mode would.
Weights are per channel unless ``quant.per_channel`` is false (``qconfig_mapping``). ReLU6 and
Hardtanh are rerouted around a torch bug in qnnpack's clamp (``patch_qnnpack_clamps``): without
that, MobileNetV2 on qnnpack is garbage.
The artifact is tied to its engine: a qnnpack build run on x86 kernels is garbage too (cosine 0.19).

Byte-reproducible: the same inputs give the same sha256 on the same machine and torch build.
Three things in a plain ``torch.jit.save`` defeat that, and each is handled here:

- the archive's root folder is the file's stem, and convert writes to a random temp name:
  we save to memory, so the root is always ``archive/``;
- ``*.debug_pkl`` holds the Python call stack of the trace (absolute venv paths, the caller's
  file and line) and FX's process-global ``<eval_with_key>.N`` counter: we drop those records
  (optional on load; a runtime error then names TorchScript code, not the Python line);
- the class name carries ``___torch_mangle_N`` from a process-global counter, so it depends on
  what was scripted earlier in the process (convert runs after trace when upstream is stale):
  we build in a fresh interpreter (workers/torchscript_worker.py), where N depends only on the model.

Across CPUs with different float kernels (AVX2, AVX-512, NEON) calibration ranges can differ in
the last bits, and with them the scales and the bytes.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from stages.core.errors import BuildError
from stages.core.layout import PROJECT_ROOT
from stages.core.log import console

from . import FORMATS, Format

if TYPE_CHECKING:
    import torch

# The Pi 4's quantized engine (ARM). It picks both the qconfig (activations without reduce_range)
# and the kernels the runtime selects on load (manifest torch.quantized_engine).
# Hard-coded until the target schema has a field for it (e.g. target.torch.quantized_engine).
ENGINE = "qnnpack"
BUILD_THREADS = 1  # calibration statistics must not depend on the build machine's core count
CALIBRATION_BATCH = 16  # HistogramObserver's bins depend on how the samples are split into batches
WORKER = Path(__file__).with_name("workers") / "torchscript_worker.py"


# ---------------------------------------------------------------- in the worker's process


def check_engine(engine: str) -> None:
    import torch

    if engine not in torch.backends.quantized.supported_engines:
        raise BuildError(f"this torch build has no {engine!r} quantized engine "
                         f"(it has {torch.backends.quantized.supported_engines})",
                         hint="install a torch wheel built with it (the stock x86_64 and aarch64 CPU wheels have "
                              "qnnpack, x86 and fbgemm)")


def qconfig_mapping(engine: str, per_channel: bool = True, moving_average: bool = False) -> Any:
    """The engine's default mapping, conv/linear weights per channel or per tensor (``quant.per_channel``),
    activations by the engine's default observer, or (``quant.calibration.moving_average``) by the mean
    of each calibration input's own min and max, as ONNX Runtime's CalibMovingAverage does.

    qnnpack's default is per-tensor weights, x86's per-channel. On MobileNetV2 (qnnpack engine, 64 calibration tensors)
    per-channel raised the mean cosine to float from 0.945 to 0.969 on the 9 gold photos and from
    0.922 to 0.969 on 16 held-out calibration crops, and top-1 on the gold photos from 66.7 to 77.8 (= float).
    ConvTranspose keeps the mapping's own per-tensor entry.
    """
    import torch
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import default_per_channel_weight_observer, default_weight_observer

    mapping = get_default_qconfig_mapping(engine)
    weight = default_per_channel_weight_observer if per_channel else default_weight_observer
    activation = (mean_minmax_observer().with_args(dtype=torch.quint8, reduce_range=False) if moving_average
                  else mapping.global_qconfig.activation)
    return mapping.set_global(QConfig(activation=activation, weight=weight))


def mean_minmax_observer() -> type:
    """An observer whose range is the mean over its calls of each call's min and max (calibration runs
    one input per call): one outlier input no longer widens the range for all."""
    import torch
    from torch.ao.quantization.observer import MinMaxObserver

    class MeanMinMaxObserver(MinMaxObserver):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.register_buffer("calls", torch.tensor(0))

        def forward(self, x_orig: "torch.Tensor") -> "torch.Tensor":
            if x_orig.numel() == 0:
                return x_orig
            low, high = torch.aminmax(x_orig.detach().to(self.min_val.dtype))
            calls = int(self.calls)
            if calls == 0:
                self.min_val, self.max_val = low, high
            else:
                self.min_val = self.min_val + (low - self.min_val) / (calls + 1)
                self.max_val = self.max_val + (high - self.max_val) / (calls + 1)
            self.calls += 1
            return x_orig

    return MeanMinMaxObserver


def output_modules(module: "torch.nn.Module") -> list[str]:
    """The submodules whose calls compute the model's outputs (a classifier's Linear), by FX tracing."""
    import torch

    graph = torch.fx.symbolic_trace(module).graph
    output = next(node for node in graph.nodes if node.op == "output")
    names: list[str] = []
    torch.fx.node.map_arg(output.args, lambda node: names.append(node.target) if node.op == "call_module" else None)
    if not names:
        raise BuildError("quant.float_outputs: no submodule computes the model's outputs (the last op is a function)",
                         hint="set quant.float_outputs=false for this model and target")
    return names


def relu6_after_conv(module: "torch.nn.Module") -> list[tuple[str, ...]]:
    """The (conv, [bn,] relu6) module names where an nn.ReLU6 takes a Conv2d's output, through at most
    a BatchNorm2d, and nothing else reads the intermediate results: the patterns FX fuses into one
    ConvReLU2d once the ReLU6 is a ReLU."""
    import torch

    graph = torch.fx.symbolic_trace(module).graph
    kinds = {name: type(sub) for name, sub in module.named_modules()}

    def is_module(node: Any, kind: type) -> bool:
        return node.op == "call_module" and issubclass(kinds.get(str(node.target), type(None)), kind)

    found = []
    for node in graph.nodes:
        if not is_module(node, torch.nn.ReLU6):
            continue
        chain, source = [node], node.args[0]
        if is_module(source, torch.nn.BatchNorm2d) and len(source.users) == 1:
            chain, source = [source, *chain], source.args[0]
        if is_module(source, torch.nn.Conv2d) and len(source.users) == 1:
            found.append(tuple(str(n.target) for n in [source, *chain]))
    return found


def capped_observer(base: type, high: float) -> type:
    """``base``, observing and passing on its input clamped at ``high``: after a ReLU that stands for
    a ReLU6, calibration computes ReLU6 exactly and the range ends at or below ``high``, so the
    quantized output saturates there (ReLU6) after convert."""
    import torch

    class CappedObserver(base):  # type: ignore[misc, valid-type]
        def forward(self, x_orig: "torch.Tensor") -> "torch.Tensor":
            return super().forward(torch.clamp(x_orig, max=high))

    return CappedObserver


def fold_relu6(module: "torch.nn.Module", mapping: Any) -> None:
    """``quant.fold_relu6``: each ReLU6 right after a Conv(+BN) becomes a ReLU that FX fuses into the
    conv, whose output observer is capped at 6. Without it, FX shares one observer between the conv's
    output and the ReLU6's (the default backend config), so the range spans the conv's pre-activation
    values, negatives included, and wastes part of the 8 bits (MobileNetV2 on qnnpack, validation
    split: mean cosine 0.9876 -> 0.9914). Edits ``module`` and ``mapping``."""
    import torch
    from torch.ao.quantization import QConfig

    qconfig = mapping.global_qconfig
    capped = QConfig(activation=capped_observer(qconfig.activation.p.func, 6.0).with_args(**qconfig.activation.p.keywords),
                     weight=qconfig.weight)
    for names in relu6_after_conv(module):
        parent_name, _, child = names[-1].rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, torch.nn.ReLU())
        for name in names:
            mapping.set_module_name(name, capped)


@dataclass(frozen=True)
class Recipe:
    """The quant config's levers that this format reads (the job carries them as plain data)."""

    per_channel: bool = True  # quant.per_channel
    moving_average: bool = False  # quant.calibration.moving_average
    float_outputs: bool = False  # quant.float_outputs: the modules computing the outputs stay float
    fold_relu6: bool = False  # quant.fold_relu6

    @property
    def batch(self) -> int:
        """Calibration inputs per forward call: one for the mean of each input's own extremes."""
        return 1 if self.moving_average else CALIBRATION_BATCH


def quantize_fx(module: "torch.nn.Module", calibration: np.ndarray, engine: str,
                recipe: Recipe = Recipe()) -> tuple["torch.fx.GraphModule", list[str]]:
    """Static INT8 with FX graph mode: fuse, insert observers, calibrate, convert (engine set throughout).
    Returns the quantized module and the names of the submodules kept in float."""
    import torch
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    check_engine(engine)
    torch.backends.quantized.engine = engine
    example = (torch.from_numpy(calibration[:1]),)
    mapping = qconfig_mapping(engine, recipe.per_channel, recipe.moving_average)
    if recipe.fold_relu6:
        fold_relu6(module, mapping)
    kept = output_modules(module.eval()) if recipe.float_outputs else []
    for name in kept:
        mapping.set_module_name(name, None)
    prepared = prepare_fx(module.eval(), mapping, example_inputs=example)
    with torch.no_grad():
        for start in range(0, len(calibration), recipe.batch):
            prepared(torch.from_numpy(calibration[start:start + recipe.batch]))
    return convert_fx(prepared), kept


def clamp_any_layout(x: "torch.Tensor", low: float, high: float) -> "torch.Tensor":
    """``hardtanh`` that qnnpack computes right for channels-last input (see ``patch_qnnpack_clamps``).

    A channels-last NCHW tensor is, viewed as NHWC, standard-contiguous: clamp that view (no copy)
    and permute back, so the next conv still gets the channels-last tensor it wants.
    """
    import torch

    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.nn.functional.hardtanh(x.permute(0, 2, 3, 1), low, high).permute(0, 3, 1, 2)
    return torch.nn.functional.hardtanh(x, low, high)


def _clamp_bounds(graph_module: "torch.fx.GraphModule", node: "torch.fx.Node") -> Optional[tuple[float, float]]:
    """(low, high) if ``node`` is a ReLU6/Hardtanh module or an F.relu6/F.hardtanh call, else None."""
    import torch
    import torch.nn.functional as F

    if node.op == "call_module" and isinstance(graph_module.get_submodule(str(node.target)), torch.nn.Hardtanh):
        module = graph_module.get_submodule(str(node.target))  # nn.ReLU6 is a Hardtanh(0, 6)
        return float(module.min_val), float(module.max_val)
    if node.op == "call_function" and node.target is F.relu6:
        return 0.0, 6.0
    if node.op == "call_function" and node.target is F.hardtanh:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float))):
            raise BuildError(f"node {node.name!r} calls F.hardtanh with bounds computed at run time",
                             hint="use constant bounds: the qnnpack clamp workaround bakes them into the graph")
        return float(low), float(high)
    return None


def _in_place(graph_module: "torch.fx.GraphModule", node: "torch.fx.Node") -> bool:
    if node.op == "call_module":
        return bool(getattr(graph_module.get_submodule(str(node.target)), "inplace", False))
    positional = len(node.args) > 3 and node.args[3]  # F.hardtanh(x, min_val, max_val, inplace)
    return bool(node.kwargs.get("inplace", False) or positional)


def patch_qnnpack_clamps(graph_module: "torch.fx.GraphModule") -> int:
    """Route every ReLU6/Hardtanh through ``clamp_any_layout``; returns how many were rerouted.

    torch 2.14's qnnpack clamp (aten/src/ATen/native/quantized/cpu/qclamp.cpp, ``qnnpack_clamp``,
    behind quantized hardtanh, relu6 and clamp) reads its input in the input's own memory format but
    allocates the output NCHW-contiguous: on the channels-last tensors every qnnpack conv returns,
    the values land at the wrong positions. MobileNetV2 then agrees with float on 0 of 9 gold photos
    (cosine 0.29). The bug is in ATen, not in an x86 kernel, so the Pi's engine has it too.
    """
    graph, count = graph_module.graph, 0
    for node in list(graph.nodes):
        bounds = _clamp_bounds(graph_module, node)
        if bounds is None:
            continue
        source = node.args[0]
        if _in_place(graph_module, node) and len(source.users) > 1:  # type: ignore[union-attr]
            raise BuildError(f"node {node.name!r} clamps {source} in place, and {source} has other users",
                             hint="make that ReLU6/Hardtanh inplace=False in the model: the qnnpack clamp "
                                  "workaround computes out of place")
        with graph.inserting_before(node):
            patched = graph.call_function(clamp_any_layout, (source, *bounds))
        node.replace_all_uses_with(patched)
        graph.erase_node(node)
        count += 1
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return count


def freeze(quantized: "torch.nn.Module", example: np.ndarray) -> "torch.jit.ScriptModule":
    """Trace (a fixed graph, as the board runs it) and freeze (weights become constants)."""
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(quantized, torch.from_numpy(example))
    return torch.jit.freeze(traced.eval())


def archive_bytes(script: "torch.jit.ScriptModule") -> bytes:
    """The saved module without its ``*.debug_pkl`` records (see the module docstring), in a fixed order."""
    import torch

    saved = io.BytesIO()
    torch.jit.save(script, saved)  # to memory: the archive's root folder is "archive", not a temp file's stem
    reader = torch._C.PyTorchFileReader(io.BytesIO(saved.getvalue()))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in sorted(reader.get_all_records()):
        if name.endswith(".debug_pkl") or name == ".data/serialization_id":  # the writer recomputes the id
            continue
        record = reader.get_record(name)
        writer.write_record(name, record, len(record))
    writer.write_end_of_file()
    return out.getvalue()


def quantized_ops(script: "torch.jit.ScriptModule") -> dict[str, int]:
    """How many quantized kernels the frozen graph calls: an INT8 build that quantized nothing shows here."""
    counts: dict[str, int] = {}
    for node in script.graph.nodes():
        kind = node.kind()
        if kind.startswith("quantized::") or kind in ("aten::quantize_per_tensor", "aten::dequantize"):
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def describe_qconfig(engine: str, recipe: Recipe) -> dict[str, Any]:
    """The global qconfig of ``qconfig_mapping``, as plain data for the manifest."""
    qconfig = qconfig_mapping(engine, recipe.per_channel, recipe.moving_average).global_qconfig

    def observer(factory: Any) -> dict[str, Any]:
        obs = factory()
        return {"observer": type(obs).__name__, "dtype": str(obs.dtype).removeprefix("torch."),
                "qscheme": str(obs.qscheme).removeprefix("torch."), "reduce_range": bool(obs.reduce_range),
                "quant_min": int(obs.quant_min), "quant_max": int(obs.quant_max)}

    return {"mapping": f"get_default_qconfig_mapping({engine!r}), per-{'channel' if recipe.per_channel else 'tensor'} weights",
            "activation": observer(qconfig.activation), "weight": observer(qconfig.weight)}


def build_here(module: "torch.nn.Module", calibration: np.ndarray, engine: str, out: Path,
               recipe: Recipe = Recipe()) -> dict[str, Any]:
    """Quantize, trace, freeze and write ``out``; returns the manifest's ``torch`` section.

    Call it in a fresh interpreter (``_build`` does) for reproducible bytes.
    """
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(BUILD_THREADS)
    quantized, kept_float = quantize_fx(module, calibration, engine, recipe)
    rerouted = patch_qnnpack_clamps(quantized) if engine == "qnnpack" else 0
    script = freeze(quantized, calibration[:1])
    ops = quantized_ops(script)
    if not any(kind.startswith("quantized::") for kind in ops):
        raise BuildError("PyTorch FX quantization left no quantized operator in the graph",
                         hint="the model's layers have no INT8 kernels in PyTorch; use target rpi4 (ONNX Runtime)")
    out.write_bytes(archive_bytes(script))
    return {"quantized_engine": engine, "mode": "fx", "qconfig": describe_qconfig(engine, recipe),
            "kept_float": kept_float,
            "calibration": {"samples": int(len(calibration)), "batch": recipe.batch},
            "build_threads": BUILD_THREADS, "ops": ops, "qnnpack_clamp_workaround": rerouted}


def calibration_inputs(path: Path, num_samples: int, shape: list[int]) -> np.ndarray:
    """The calibrate stage's tensors (NCHW float, preprocessed), the first ``num_samples``."""
    data = np.load(path)[:num_samples]
    if len(data) == 0 or list(data.shape[1:]) != list(shape[1:]):
        raise BuildError(f"calibration tensors {path} have shape {list(data.shape)}, the model takes {shape}",
                         hint="rebuild the calibrate stage (python -m stages.calibrate) for this model")
    return np.ascontiguousarray(data, dtype=np.float32)


# ---------------------------------------------------------------- in the build's process


def job_for(cfg, layout, out: Path, engine: str) -> dict[str, Any]:  # noqa: ANN001
    """What the worker needs, as JSON: the model config (to rebuild the float module) and paths."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(OmegaConf.structured(cfg.model), resolve=True, enum_to_str=True)
    return {"model": model, "weights": str(layout.weights), "calibration": str(layout.calibration),
            "num_samples": int(cfg.quant.calibration.num_samples), "engine": engine, "output": str(out),
            "recipe": asdict(Recipe(per_channel=bool(cfg.quant.per_channel),
                                    moving_average=bool(cfg.quant.calibration.moving_average),
                                    float_outputs=bool(cfg.quant.float_outputs),
                                    fold_relu6=bool(cfg.quant.fold_relu6)))}


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Build in a fresh interpreter (TorchScript's class-name counter is process-global)."""
    with tempfile.TemporaryDirectory() as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        # This checkout first (an editable install may point elsewhere); a fixed hash seed, so no
        # set of strings is iterated in a different order from one build to the next.
        path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": str(BUILD_THREADS), "PYTHONPATH": path}
        proc = subprocess.run([sys.executable, str(WORKER), str(job_path), str(result_path)],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
        log = (proc.stdout + proc.stderr)[-3000:]
        if not result_path.exists():
            raise BuildError(f"the TorchScript worker ({WORKER.name}) exited {proc.returncode} with no result:\n{log}",
                             hint="the log above ends with the worker's error; a crash inside torch is a torch bug "
                                  "for this model: try target rpi4 (ONNX Runtime INT8)")
        result = json.loads(result_path.read_text())
    if not result.get("ok"):
        raise BuildError(f"PyTorch INT8 build failed: {result.get('error')}",
                         hint=result.get("hint") or f"see the worker's log:\n{log}")
    return result


def _build(cfg, layout, out: Path, manifest: dict) -> dict:  # noqa: ANN001 - see Format.build
    n = cfg.quant.calibration.num_samples
    console.print(f"PyTorch FX static INT8 ({ENGINE}), calibrated on {n} tensors, traced and frozen")
    result = run_worker(job_for(cfg, layout, out, ENGINE))
    return {"torch": result["torch"]}


def _unavailable(cfg) -> Optional[str]:  # noqa: ANN001
    try:
        import torch
    except ImportError:
        return "torch is not importable in the build venv: pip install -e '.[build]'"
    if ENGINE not in torch.backends.quantized.supported_engines:
        return (f"this torch build has no {ENGINE!r} quantized engine ({torch.backends.quantized.supported_engines}); "
                "install a stock CPU wheel of torch")
    return None


FORMATS.register("torchscript")(Format("pt", _build, ("torch", "torchvision", "onnx"), unavailable=_unavailable))
