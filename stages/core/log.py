"""Console output: rich in a terminal, plain lines in CI logs."""
from __future__ import annotations

import os
import sys
import warnings

from rich.console import Console

_plain = bool(os.environ.get("CI")) or not sys.stderr.isatty()
console = Console(stderr=True, no_color=_plain, highlight=False, soft_wrap=True)


def progress_enabled() -> bool:
    """Progress bars only for a person watching a terminal, never in CI logs."""
    return not _plain


# torch.jit and the TorchScript ONNX exporter are deprecated upstream but remain the paths that
# give static, reproducible graphs and the .pt artifacts boards load; the notices are noise here.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.(jit|onnx)")
