"""Schemes that hand the float graph on: no quantization, or a vendor toolchain that quantizes during convert."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

from . import SCHEMES, Scheme


def _float(cfg, layout, out: Path, exclude: Sequence[str] = (), cache: Optional[Path] = None) -> dict:  # noqa: ANN001
    shutil.copyfile(layout.rewritten, out)
    return {}


def _vendor(cfg, layout, out: Path, exclude: Sequence[str] = (), cache: Optional[Path] = None) -> dict:  # noqa: ANN001
    """The vendor toolchain quantizes during convert (RKNN, PyTorch): hand it the float graph."""
    shutil.copyfile(layout.rewritten, out)
    return {"quantized_by": f"the {cfg.target.format} toolchain during convert"}


SCHEMES.register("none")(Scheme(_float))
SCHEMES.register("vendor")(Scheme(_vendor))
