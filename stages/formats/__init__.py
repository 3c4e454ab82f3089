"""Artifact formats: how a target's device artifact is made from the quantized graph.

A format is registered by name (``target.format``) with its file extension, the function that
writes the artifact, and the packages whose versions the manifest records.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from stages.core.registry import Registry

if TYPE_CHECKING:
    from stages.core.config import Config
    from stages.core.layout import Layout


@dataclass(frozen=True)
class Format:
    ext: str
    build: Callable[["Config", "Layout", Path], None]  # writes the artifact to the given (temporary) path
    toolchain: tuple[str, ...]  # packages whose versions the manifest records


FORMATS: Registry[Format] = Registry("artifact format", "target.format")


def artifact_name(format_name: str) -> str:
    return f"model.{FORMATS.get(format_name).ext}"


# Importing a module registers its format.
from . import onnx  # noqa: E402,F401
