"""Quant schemes: registered functions, selected and parametrised by conf/quant/*.yaml.

A scheme turns the rewritten float graph (``layout.rewritten``) into the graph convert packages,
written to ``out``, and returns details for quantize.json. ``exclude`` names extra nodes to keep
in float (the budget repair adds them); ``cache`` is a calibration cache file shared by repeated
calls, so a repair re-quantizes without re-calibrating.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from stages.core.registry import Registry

if TYPE_CHECKING:
    from stages.core.config import Config
    from stages.core.layout import Layout


@dataclass(frozen=True)
class Scheme:
    quantize: Callable[["Config", "Layout", Path, Sequence[str], Optional[Path]], dict]
    repairable: bool = False  # can keep named nodes in float (the budget repair needs that)
    qdq: bool = False  # the output is a QDQ graph (per-layer divergence applies)
    # The repair's ranking: a graph with only ``node`` in float, made from the graph with everything
    # quantized (``base``) and written to ``out``; False where the scheme cannot (the repair then quantizes
    # once per candidate). None: always quantize once per candidate.
    keep_float: Optional[Callable[[Path, str, Path], bool]] = None


SCHEMES: Registry[Scheme] = Registry("quant scheme", "quant.scheme")


def calibration_batches(cfg: "Config", layout: "Layout") -> list:
    """The first quant.calibration.num_samples calibration tensors, one batch of one each."""
    import numpy as np

    from stages.core.errors import BuildError

    data = np.load(layout.calibration)
    n = cfg.quant.calibration.num_samples
    if n > len(data):
        raise BuildError(f"quant.calibration.num_samples={n} but the calibration set has {len(data)} tensors",
                         hint="lower num_samples or raise model.calibration.augment.samples")
    return [data[i:i + 1] for i in range(n)]


# Importing a module registers its schemes.
from . import basic, nncf_ptq, ort, pytorch_quantization  # noqa: E402,F401
