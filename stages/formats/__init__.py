"""Artifact formats: how a target's device artifact is made from the quantized graph.

A format is registered by name (``target.format``). Converting is three steps, so that a
toolchain that is not installed here still leaves everything a user needs to finish elsewhere:

  prepare      write the vendor tool's inputs (graph, calibration list, tool config) into
               artifacts/_build/<model>/<target>/prepared/
  unavailable  None when the toolchain is usable here, else the reason and what to install
  build        write the artifact (given the manifest so far, which a container may embed);
               return extra manifest fields (e.g. GPU and TensorRT version)

``accelerated`` picks the nodes the target's accelerator runs, for the operator check that
convert runs first (default: all of them; ``.onpu`` leaves its CPU head out).
``gold`` runs the artifact on gold inputs for the evaluate stage; formats the runtime cannot
run on this machine (RKNN: only the toolkit's simulator) bring their own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from stages.core.registry import Registry

if TYPE_CHECKING:
    from stages.core.config import Config
    from stages.core.layout import Layout


@dataclass
class GoldRun:
    """What evaluate needs from running an artifact: outputs, and a timed call if timing means anything."""

    outputs: np.ndarray  # first output, one row per gold input
    backend: str
    timed_call: Optional[Callable[[], Any]]  # one inference on gold input 0; None on a simulator
    note: str = ""
    extra: dict = field(default_factory=dict)


def _nothing_to_prepare(cfg: "Config", layout: "Layout") -> list[Path]:
    return []


def _always_available(cfg: "Config") -> Optional[str]:
    return None


def _all_nodes(cfg: "Config", model: Any) -> tuple[list[Any], str]:
    return list(model.graph.node), ""


@dataclass(frozen=True)
class Format:
    ext: str
    build: Callable[["Config", "Layout", Path, dict], dict]
    toolchain: tuple[str, ...]  # packages whose versions the manifest records
    prepare: Callable[["Config", "Layout"], list[Path]] = _nothing_to_prepare
    unavailable: Callable[["Config"], Optional[str]] = _always_available
    gold: Optional[Callable[["Config", "Layout", list[np.ndarray], int], GoldRun]] = None
    accelerated: Callable[["Config", Any], tuple[list[Any], str]] = _all_nodes  # (nodes, where they run)


FORMATS: Registry[Format] = Registry("artifact format", "target.format")


def artifact_name(format_name: str) -> str:
    return f"model.{FORMATS.get(format_name).ext}"


# Importing a module registers its format.
from . import onnx, onpu, rknn, tensorrt, torchscript  # noqa: E402,F401
