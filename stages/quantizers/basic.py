"""Schemes that hand the float graph on: no quantization, or a vendor toolchain that quantizes during convert."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

from stages.core.errors import BuildError

from . import SCHEMES, Scheme


def _float(cfg, layout, out: Path, exclude: Sequence[str] = (), cache: Optional[Path] = None) -> dict:  # noqa: ANN001
    shutil.copyfile(layout.rewritten, out)
    return {}


def _vendor(cfg, layout, out: Path, exclude: Sequence[str] = (), cache: Optional[Path] = None) -> dict:  # noqa: ANN001
    """The vendor toolchain quantizes during convert (RKNN, PyTorch): hand it the float graph. With a
    vendor_ladder (RKNN), the toolkit's settings are chosen here, on the validation split."""
    shutil.copyfile(layout.rewritten, out)
    details: dict = {"quantized_by": f"the {cfg.target.format} toolchain during convert"}
    if cfg.quant.vendor_ladder:
        if cfg.target.format != "rknn":
            raise BuildError(f"quant.vendor_ladder is for the RKNN toolkit; target {cfg.target.name!r} has format "
                             f"{cfg.target.format}", hint="clear quant.vendor_ladder, or build for an rknn target")
        from .rknn_levers import choose

        details["vendor_levers"] = choose(cfg, layout, out)
    return details


SCHEMES.register("none")(Scheme(_float))
SCHEMES.register("vendor")(Scheme(_vendor))
