"""The manifest's schema: every field the runtime reads, with its type, range or allowed values.

``check(data, where)`` raises RuntimeLoadError naming the file and the field at fault (``inputs[0].shape``),
before any backend sees the file. Standard library only: it runs on the board.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from .errors import RuntimeLoadError

DTYPES = ("float32", "float16", "float64", "uint8", "int8", "uint16", "int16", "int32", "int64", "bool")
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR", "GRAY")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Fail(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key, self.problem = key, problem


def _str(value: Any, key: str, allowed: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or not value:
        raise _Fail(key, f"must be a non-empty string, got {value!r}")
    if allowed and value not in allowed:
        raise _Fail(key, f"is {value!r}; expected one of {', '.join(allowed)}")
    return value


def _int(value: Any, key: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" + (f" and <= {high}" if high is not None else "")
        raise _Fail(key, f"must be an integer {bound}, got {value!r}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")):
        raise _Fail(key, f"must be a finite number, got {value!r}")
    return float(value)


def _list(value: Any, key: str, item: Callable[[Any, str], Any], min_len: int = 0) -> list:
    if not isinstance(value, list) or len(value) < min_len:
        raise _Fail(key, f"must be a list of at least {min_len} item(s), got {value!r}"[:200])
    return [item(v, f"{key}[{i}]") for i, v in enumerate(value)]


def _dict(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise _Fail(key, f"must be a mapping, got {type(value).__name__}")
    return value


def _dim(value: Any, key: str) -> int | str:
    if isinstance(value, str) and value:
        return value  # a free dimension, by name
    return _int(value, key, 1)


def _preprocess(pre: Any, key: str, layout: str, shape: list) -> None:
    pre = _dict(pre, key)
    color = _str(pre.get("color", "RGB"), f"{key}.color", COLORS)
    channels = 1 if color == "GRAY" else 3
    _str(pre.get("interpolation", "bilinear"), f"{key}.interpolation", INTERPOLATIONS)
    if pre.get("resize") is not None:
        _int(pre["resize"], f"{key}.resize", 1)
    for name, default in (("mean", 0.0), ("std", 1.0)):
        values = _list(pre.get(name, [default] * channels), f"{key}.{name}", _number, min_len=channels)
        if name == "std" and any(v <= 0 for v in values):
            raise _Fail(f"{key}.std", f"must be > 0 everywhere, got {values}")
    spatial = shape[2:4] if layout == "NCHW" else shape[1:3]
    if "crop" in pre:
        crop = _list(pre["crop"], f"{key}.crop", lambda v, k: _int(v, k, 1), min_len=2)
        if len(crop) != 2:
            raise _Fail(f"{key}.crop", f"must be [height, width], got {crop}")
    elif not all(isinstance(d, int) for d in spatial):
        raise _Fail(f"{key}.crop", "is required when the input's height or width is free")
    shape_channels = shape[1] if layout == "NCHW" else shape[3]
    if isinstance(shape_channels, int) and shape_channels != channels:
        raise _Fail(key, f"colour {color!r} gives {channels} channel(s), but the input's shape has {shape_channels}")


def _tensor(value: Any, key: str, is_input: bool) -> dict:
    t = _dict(value, key)
    _str(t.get("name"), f"{key}.name")
    shape = _list(t.get("shape"), f"{key}.shape", _dim, min_len=1)
    _str(t.get("dtype"), f"{key}.dtype", DTYPES)
    if t.get("layout") is not None:
        layout = _str(t["layout"], f"{key}.layout", LAYOUTS)
        if len(shape) != 4:
            raise _Fail(f"{key}.shape", f"has {len(shape)} dimension(s); a {layout} image input has 4")
    if is_input and t.get("preprocess") is not None:
        if len(shape) != 4:  # preprocessing makes an image batch, whatever the layout says
            raise _Fail(f"{key}.shape", f"has {len(shape)} dimension(s); an input with preprocessing is an image "
                                        "batch of 4 (N, C, H, W or N, H, W, C)")
        _preprocess(t["preprocess"], f"{key}.preprocess", t.get("layout") or "NCHW", shape)
    if t.get("labels") is not None:
        labels = _list(t["labels"], f"{key}.labels", _str, min_len=1)
        classes = shape[1] if len(shape) > 1 else shape[0]
        if isinstance(classes, int) and len(labels) != classes:
            raise _Fail(f"{key}.labels", f"has {len(labels)} label(s) for {classes} output classes")
    return t


def _check(data: Any) -> None:
    if not isinstance(data, dict):
        raise _Fail("(top level)", f"must be a JSON object, got {type(data).__name__}")
    for key in ("format", "artifact", "model", "target", "quant", "task"):
        _str(data.get(key), key)
    if "/" in data["artifact"] or "\\" in data["artifact"]:
        raise _Fail("artifact", f"must be a file name beside the manifest, got {data['artifact']!r}")
    if not isinstance(data.get("sha256"), str) or not SHA256.match(data["sha256"]):
        raise _Fail("sha256", f"must be 64 lowercase hex digits, got {data.get('sha256')!r}")
    _list(data.get("inputs"), "inputs", lambda v, k: _tensor(v, k, True), min_len=1)
    _list(data.get("outputs"), "outputs", lambda v, k: _tensor(v, k, False), min_len=1)
    runtime = _dict(data.get("runtime", {}), "runtime")
    if runtime.get("threads") is not None:
        _int(runtime["threads"], "runtime.threads", 1, 1024)
    if runtime.get("providers") is not None:
        _list(runtime["providers"], "runtime.providers", _str)
    for section in ("toolchain", "torch"):
        if data.get(section) is not None:
            _dict(data[section], section)
    if isinstance(data.get("torch"), dict) and data["torch"].get("quantized_engine") is not None:
        _str(data["torch"]["quantized_engine"], "torch.quantized_engine")


def check(data: Any, where: str) -> None:
    """Raise RuntimeLoadError, naming ``where`` and the field, unless ``data`` is a manifest this runtime reads."""
    try:
        _check(data)
    except _Fail as fail:
        raise RuntimeLoadError(f"manifest {where}: {fail.key} {fail.problem}; rebuild the artifact or re-copy "
                               "its manifest.json from the build") from None
