"""Console output: rich in a terminal, plain lines in CI logs."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import track as rich_track

T = TypeVar("T")

_plain = bool(os.environ.get("CI")) or not sys.stderr.isatty()
console = Console(stderr=True, no_color=_plain, highlight=False, soft_wrap=True)


def progress_enabled() -> bool:
    """Progress bars only for a person watching a terminal, never in CI logs."""
    return not _plain


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar in a terminal; silently elsewhere (one summary line at the end)."""
    if progress_enabled():
        yield from rich_track(items, description=description, total=total, console=console, transient=True)
        return
    count = 0
    for count, item in enumerate(items, 1):
        yield item
    console.print(f"{description} done ({count})")


# torch.jit and the TorchScript ONNX exporter are deprecated upstream but remain the paths that
# give static, reproducible graphs and the .pt artifacts boards load; the notices are noise here.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.(jit|onnx)")


def user_error(where: str, exc: BaseException | str) -> int:
    """The one way every CLI reports a user error: one message, printed literally (never read as Rich
    markup: a key like '[/x]' or a list in brackets is part of the message), and exit code 2."""
    from rich.markup import escape

    console.print(f"[bold red]error[/] in {escape(where)}: {escape(str(exc))}")
    return 2


def internal_error(where: str) -> int:
    """Anything that is not a user error is a bug: the traceback, and a message that says so (exit 3)."""
    from rich.markup import escape

    console.print_exception()
    console.print(f"[bold red]internal error[/] in {escape(where)}: this is a bug in edgebuild, not in your "
                  "config or files; please report it with the traceback above")
    return 3


def cli(where: str):  # noqa: ANN201 - a decorator
    """Every CLI's main through one error contract (runtime.errors.exit_code): a user error (the
    UserError family: BuildError, the runtime's RuntimeLoadError / InputSpecError) becomes one
    message and exit 2; anything else is reported as a bug (exit 3)."""
    import functools

    def wrap(main):  # noqa: ANN001, ANN202
        @functools.wraps(main)
        def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            from runtime.errors import exit_code

            return exit_code(lambda: main(*args, **kwargs), where, user=user_error, bug=internal_error)
        return run
    return wrap
