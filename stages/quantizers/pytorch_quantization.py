"""NVIDIA pytorch-quantization (2.1.3): TensorRT explicit-quantization QDQ made from the PyTorch module.

The trained float module (``layout.weights``) gets its Conv/ConvTranspose/Linear layers swapped for
pytorch-quantization's quantized versions (no global monkeypatch: ``quant_modules.initialize()``
would patch ``torch.nn`` for the whole process), is calibrated in eval mode on the calibration
tensors, then exported with ``TensorQuantizer.use_fb_fake_quant``: QuantizeLinear/DequantizeLinear
pairs, symmetric int8, zero points 0, per-channel (axis 0) weights when ``quant.per_channel``,
per-tensor activations. That is the form TensorRT's explicit quantization reads.

Unlike the ONNX schemes, this one starts from the module, not from ``layout.rewritten``: a target's
graph rewrites are not in its output (it refuses targets that have any), and BatchNorm that directly
follows a conv inside an ``nn.Sequential`` is folded into the conv before quantizing, as the
float graph's simplifier folds it.

``exclude`` (and ``quant.exclude_nodes``) are ONNX node names of the float graph, like
``/features/3/conv/0/0/Conv``: the TorchScript exporter names a node after the module scope that
made it, so the scopes name the module (``features.3.conv.0.0``), and that module keeps float weights
and inputs. A name that maps to no quantized module is an error. The calibration cache holds the
calibrated amax of every quantizer (calibration runs with quantization off, so keeping a layer in
float does not change the others' ranges): repeated calls do not re-calibrate.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from stages.core.config import CalibMethod, QType
from stages.core.errors import BuildError, first_line
from stages.core.log import console

from . import SCHEMES, Scheme

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis)
BATCH = 16  # calibration forward passes, tensors per batch


def _check(cfg) -> None:  # noqa: ANN001
    q = cfg.quant
    if q.weight_type != QType.int8 or q.activation_type != QType.int8:
        raise BuildError(f"quant {q.name!r}: scheme pytorch_quantization makes int8 weights and activations only "
                         f"(got weight_type={q.weight_type.value}, activation_type={q.activation_type.value})",
                         hint="set weight_type: int8 and activation_type: int8, or use scheme ort_static")
    if not (q.symmetric_weights and q.symmetric_activations):
        raise BuildError(f"quant {q.name!r}: pytorch_quantization is symmetric only (zero points 0, as TensorRT needs)",
                         hint="set symmetric_weights: true and symmetric_activations: true")
    if q.exclude_op_types:
        raise BuildError(f"quant {q.name!r}: scheme pytorch_quantization cannot keep op types in float",
                         hint="name the nodes in quant.exclude_nodes, or use scheme ort_static")
    if cfg.rewrite:
        raise BuildError(f"scheme pytorch_quantization exports from the PyTorch module, so the graph rewrites "
                         f"{sorted(cfg.rewrite)} of target {cfg.target.name!r} would be lost",
                         hint="use scheme ort_static (quant=int8_tensorrt) for targets with graph rewrites")


def _fold_batchnorm(module: Any) -> list[str]:
    """Fold every BatchNorm that directly follows a conv in an nn.Sequential into that conv."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = []
    for name, seq in module.named_modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (type(conv) in (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
                    and isinstance(bn, torch.nn.modules.batchnorm._BatchNorm)
                    and bn.num_features == conv.out_channels and bn.track_running_stats):
                seq._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq._modules[b] = torch.nn.Identity()
                folded.append(f"{name}.{a}" if name else a)
    return folded


def _descriptors(cfg, kind: str):  # noqa: ANN202, ANN001
    """(input descriptor, weight descriptor) for a layer kind: conv, convtranspose, linear."""
    from pytorch_quantization.tensor_quant import QuantDescriptor

    q = cfg.quant
    method = "max" if q.calibration.method == CalibMethod.minmax else "histogram"
    weight_axis = (1 if kind == "convtranspose" else 0) if q.per_channel else None  # the output channels
    return (QuantDescriptor(num_bits=8, calib_method=method, axis=None),
            QuantDescriptor(num_bits=8, calib_method="max", axis=weight_axis))


def _quant_copy(layer: Any, cfg) -> Optional[Any]:  # noqa: ANN001
    """The pytorch-quantization version of a float layer, with its weights; None for other layers."""
    import torch
    from pytorch_quantization import nn as quant_nn

    if not _is_quantizable(layer):
        return None
    t = type(layer)
    convs = {torch.nn.Conv1d: quant_nn.QuantConv1d, torch.nn.Conv2d: quant_nn.QuantConv2d,
             torch.nn.Conv3d: quant_nn.QuantConv3d}
    transposed = {torch.nn.ConvTranspose1d: quant_nn.QuantConvTranspose1d,
                  torch.nn.ConvTranspose2d: quant_nn.QuantConvTranspose2d,
                  torch.nn.ConvTranspose3d: quant_nn.QuantConvTranspose3d}
    if t in convs:
        qi, qw = _descriptors(cfg, "conv")
        new = convs[t](layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                       padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                       bias=layer.bias is not None, padding_mode=layer.padding_mode,
                       quant_desc_input=qi, quant_desc_weight=qw)
    elif t in transposed:
        qi, qw = _descriptors(cfg, "convtranspose")
        new = transposed[t](layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                            padding=layer.padding, output_padding=layer.output_padding, groups=layer.groups,
                            bias=layer.bias is not None, dilation=layer.dilation, padding_mode=layer.padding_mode,
                            quant_desc_input=qi, quant_desc_weight=qw)
    elif t is torch.nn.Linear:
        qi, qw = _descriptors(cfg, "linear")
        new = quant_nn.QuantLinear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                   quant_desc_input=qi, quant_desc_weight=qw)
    else:
        return None
    new.load_state_dict(layer.state_dict())
    return new.eval()


def _swap(module: Any, cfg, keep_float: set[str]) -> list[str]:  # noqa: ANN001
    """Replace quantizable layers in place (except those named in keep_float); returns their names."""
    swapped = []
    for name, layer in list(module.named_modules()):
        if not name or name in keep_float:
            continue
        new = _quant_copy(layer, cfg)
        if new is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, new)
        swapped.append(name)
    return swapped


def module_candidates(node: str) -> list[str]:
    """The modules a TorchScript-exported node may come from, most likely first. Exported from a traced
    module (the pipeline's way) a node is named by attribute path: "/features/0/0/Conv" -> "features.0.0";
    exported from the module itself, by qualified names: "/features/features.0/features.0.0/Conv"."""
    scopes = node.strip("/").split("/")[:-1]
    return list(dict.fromkeys([".".join(scopes), scopes[-1]])) if scopes else []


def _keep_float(cfg, module: Any, nodes: Sequence[str]) -> dict[str, str]:  # noqa: ANN001
    """node name -> module name for the nodes to keep in float; BuildError for a name that maps to no layer."""
    import torch

    layers = {name for name, layer in module.named_modules()
              if name and isinstance(layer, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))}
    mapping = {}
    for node in nodes:
        name = next((c for c in module_candidates(node) if c in layers), ".".join(module_candidates(node)[:1]))
        if name not in layers:
            raise BuildError(
                f"scheme pytorch_quantization cannot keep node {node!r} in float: it names no Conv/Linear module "
                f"of {cfg.model.name!r} (looked for module {name!r})",
                hint="name a Conv or Gemm node of the float graph (layout.rewritten) as the exporter named it, "
                     "e.g. /features/0/0/Conv")
        mapping[node] = name
    return mapping


def _is_quantizable(layer: Any) -> bool:
    """A layer pytorch-quantization reproduces exactly: its quantized convs take numeric zero padding only
    (they ignore reflect/replicate padding and fail on padding="same"); such convs stay float."""
    import torch

    if type(layer) is torch.nn.Linear:
        return True
    return (type(layer) in (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
                            torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
            and layer.padding_mode == "zeros" and not isinstance(layer.padding, str))


def _left_float(module: Any) -> list[str]:
    """Conv layers of the module that stay float because pytorch-quantization cannot reproduce them."""
    import torch

    return [name for name, layer in module.named_modules()
            if isinstance(layer, torch.nn.modules.conv._ConvNd) and not _is_quantizable(layer)]


def _quantizers(module: Any) -> dict[str, Any]:
    from pytorch_quantization import nn as quant_nn

    return {name: m for name, m in module.named_modules() if isinstance(m, quant_nn.TensorQuantizer)}


def _calibrate(cfg, module: Any, data: np.ndarray) -> dict[str, Any]:  # noqa: ANN001
    """Collect statistics with quantization off, then compute every quantizer's amax."""
    import torch
    from pytorch_quantization import calib

    q = cfg.quant.calibration
    quantizers = _quantizers(module)
    for quantizer in quantizers.values():
        quantizer.disable_quant()
        quantizer.enable_calib()
    with torch.no_grad():
        for i in range(0, len(data), BATCH):
            module(torch.from_numpy(np.ascontiguousarray(data[i:i + BATCH], dtype=np.float32)))
    amax = {}
    for name, quantizer in quantizers.items():
        # strict=False: a layer the forward never reached gets NaN instead of an exception
        if isinstance(quantizer._calibrator, calib.MaxCalibrator):
            quantizer.load_calib_amax(strict=False)
        else:
            quantizer.load_calib_amax(q.method.value, percentile=q.percentile, strict=False)
        # A range of 0 (an all-zero weight channel, an activation that stayed 0) or NaN would make a
        # scale of 0, which ONNX Runtime divides by and TensorRT rejects: any positive scale is exact there.
        value = quantizer.amax.detach().float()
        quantizer.amax = torch.where(torch.isfinite(value) & (value > 0), value, torch.ones_like(value)).tolist()
        quantizer.disable_calib()
        quantizer.enable_quant()
        amax[name] = quantizer.amax.detach().tolist()  # nested lists keep the shape (per-channel: C x 1 x ...)
    return amax


def _load_amax(module: Any, amax: dict[str, Any]) -> None:
    for name, quantizer in _quantizers(module).items():
        if name not in amax:
            raise BuildError(f"calibration cache has no amax for quantizer {name!r}",
                             hint="delete the cache file so the scheme calibrates again")
        quantizer.amax = amax[name]  # a float, or nested lists for per-channel
        quantizer.disable_calib()
        quantizer.enable_quant()


def _qdq_counts(model: Any) -> dict[str, int]:
    return {op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}


def _export(cfg, module: Any, out: Path) -> dict:  # noqa: ANN001
    import onnx
    import torch
    from pytorch_quantization import nn as quant_nn

    opset = max(cfg.model.export.opset, MIN_OPSET)
    example = torch.zeros(tuple(cfg.model.input.shape))
    previous = quant_nn.TensorQuantizer.use_fb_fake_quant
    quant_nn.TensorQuantizer.use_fb_fake_quant = True
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings from amax.item(), the exporter's deprecation
            # Traced first, as the trace and export stages do: the graph then names its nodes and
            # tensors as the float graph does (per-layer divergence pairs them by name).
            traced = torch.jit.trace(module, example)
            torch.onnx.export(traced, (example,), str(out), dynamo=False, opset_version=opset,
                              input_names=[cfg.model.input.name], output_names=[cfg.model.output.name],
                              do_constant_folding=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # an op with no ONNX symbolic, a quantizer it cannot trace
        first = first_line(exc)
        raise BuildError(f"exporting the fake-quantized {cfg.model.name!r} to ONNX (opset {opset}) failed: {first[:300]}",
                         hint="check quant.exclude_nodes, or the model's export.opset") from None
    finally:
        quant_nn.TensorQuantizer.use_fb_fake_quant = previous
    model = onnx.load(str(out))
    simplified = "none"
    if cfg.model.export.simplifier == "onnxsim":
        simplified = "rejected"
        try:
            from onnxsim import simplify

            candidate, ok = simplify(model)
        except Exception:  # noqa: BLE001 - onnxsim is optional polish here, the export stands without it
            ok = False
        if ok and _qdq_counts(candidate) == _qdq_counts(model):  # it must keep every Q/DQ pair
            model, simplified = candidate, "onnxsim"
            onnx.save(model, str(out))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise BuildError(f"pytorch_quantization's ONNX failed onnx.checker: {exc}",
                         hint=f"try another model.export.opset (used {opset})") from exc
    return {"opset": opset, "simplified": simplified, **_qdq_counts(model)}


def _import_package() -> None:
    """Import pytorch-quantization without its side effects on the process: its __init__ calls absl's
    use_absl_handler(), which replaces the root logger's handlers and resets the root level."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # its tensor_quant uses @torch.jit.script, deprecated
            import pytorch_quantization.nn  # noqa: F401
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """pytorch-quantization logs lines per quantizer through absl's logger: keep them out of the build log,
    even its error lines (tracing reads `scale`, which logs one per quantizer). The logger named "absl"
    alone, not absl.set_verbosity, which would set the root logger's level."""
    import logging

    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _quantize(cfg, layout, out: Path, exclude: Sequence[str] = (), cache: Optional[Path] = None) -> dict:  # noqa: ANN001
    try:
        _import_package()
    except ImportError:
        raise BuildError("scheme pytorch_quantization needs NVIDIA's pytorch-quantization package",
                         hint="pip install pytorch-quantization==2.1.3 (2.2.x on PyPI is a placeholder)") from None
    from stages.core.models import float_module

    _check(cfg)
    q = cfg.quant
    n = q.calibration.num_samples
    module = float_module(cfg.model, Path(layout.weights))
    folded = _fold_batchnorm(module)
    nodes = [*q.exclude_nodes, *exclude]
    keep = _keep_float(cfg, module, nodes)
    unsupported = _left_float(module)
    key = {"method": q.calibration.method.value, "percentile": q.calibration.percentile, "num_samples": n,
           "per_channel": q.per_channel}
    with _quiet():
        swapped = _swap(module, cfg, set(keep.values()))
        cached = json.loads(cache.read_text()) if cache is not None and cache.exists() else None
        if cached is not None and cached.get("key") == key:
            # The cache was made with every layer quantized: keep what this call quantizes.
            _load_amax(module, cached["amax"])
        else:
            data = np.load(layout.calibration)
            if n > len(data):
                raise BuildError(f"quant.calibration.num_samples={n} but the calibration set has {len(data)} tensors",
                                 hint="lower num_samples or raise model.calibration.augment.samples")
            console.print(f"calibrating on {n} tensors ({q.calibration.method.value})")
            if keep:  # calibrate the fully quantized module, so the cache serves any later exclusion
                full = float_module(cfg.model, Path(layout.weights))
                _fold_batchnorm(full)
                _swap(full, cfg, set())
                amax = _calibrate(cfg, full, data[:n])
                _load_amax(module, amax)
            else:
                amax = _calibrate(cfg, module, data[:n])
            if cache is not None:
                cache.write_text(json.dumps({"key": key, "amax": amax}))
        exported = _export(cfg, module, out)
    return {"calibration_samples": n, "quantized_layers": len(swapped), "folded_batchnorm": len(folded),
            "kept_float_modules": sorted(set(keep.values())), "unsupported_float_modules": unsupported,
            "export": exported}


def _bypassed(base: Path, node: str, out: Path) -> bool:
    """The exported graph with ``node`` in float, without exporting again (a trace and an export of the
    whole module per layer, about 4 s for MobileNetV2): every quantized layer has its own input and weight
    quantizers, exported as QuantizeLinear -> DequantizeLinear pairs that feed only it, so the layer reads
    the pairs' float inputs instead. That is the graph `_quantize` exports with the layer kept in float
    (tests/test_quantizer_pytorch_quantization.py compares the two). False when the node is not a layer
    fed that way."""
    import onnx

    model = onnx.load(str(base))
    producer = {o: n for n in model.graph.node for o in n.output}
    layer = next((n for n in model.graph.node if n.name == node), None)
    if layer is None:
        return False
    bypassed = 0
    for i, tensor in enumerate(list(layer.input[:2])):
        dq = producer.get(tensor)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            layer.input[i] = q.input[0]
            bypassed += 1
    if not bypassed:
        return False
    onnx.save(model, str(out))
    return True


SCHEMES.register("pytorch_quantization")(Scheme(_quantize, repairable=True, qdq=True, keep_float=_bypassed))
