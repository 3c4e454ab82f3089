"""``onnx``: the quantized graph itself, run by ONNX Runtime on the board's CPU."""
from __future__ import annotations

import shutil
from pathlib import Path

from . import FORMATS, Format


def _copy_quantized(cfg, layout, out: Path, manifest: dict) -> dict:  # noqa: ANN001 - see Format.build
    shutil.copyfile(layout.quantized, out)
    return {}


FORMATS.register("onnx")(Format("onnx", _copy_quantized, ("torch", "onnx", "onnxsim", "onnxruntime")))
