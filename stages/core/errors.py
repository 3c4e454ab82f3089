"""Two kinds of failure: the user's (fixable by editing config or installing something) and ours."""
from __future__ import annotations

from runtime.errors import UserError


class BuildError(UserError):
    """A problem the user can fix. The message names the key, node or file, and says what to do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  fix: {hint}")


class ToolchainUnavailable(BuildError):
    """A vendor toolchain is not installed here; inputs were prepared, no artifact was written."""


class InternalError(Exception):
    """A bug in this project, not in the user's config. Please report it with the traceback."""


def first_line(exc: BaseException) -> str:
    """An exception's first line for a one-line message (its type when it has no text)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
