"""Graph rewrites on ONNX: registered functions, selected and parametrised by conf/rewrite/*.yaml.

A rewrite takes the model and its params, edits the graph in place, and returns the names of
the nodes it changed, so the build report can show what each rewrite did.
"""
from __future__ import annotations

from typing import Any, Callable

from stages.core.registry import Registry

Rewrite = Callable[[Any, dict[str, Any]], list[str]]
REWRITES: Registry[Rewrite] = Registry("rewrite", "rewrite.<name>.fn")

# Importing a module registers its rewrite.
from . import fold_batchnorm  # noqa: E402,F401
from . import resize  # noqa: E402,F401
