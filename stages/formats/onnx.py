"""``onnx``: the quantized graph itself, run by ONNX Runtime on the board."""
from __future__ import annotations

import shutil
from pathlib import Path

from . import FORMATS, Format


def _copy_quantized(cfg, layout, out: Path) -> None:  # noqa: ANN001 - see Format.build
    shutil.copyfile(layout.quantized, out)


FORMATS.register("onnx")(Format("onnx", _copy_quantized, ("torch", "onnx", "onnxsim", "onnxruntime")))
