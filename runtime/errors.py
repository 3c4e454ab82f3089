"""Runtime errors: each names the file, input or key at fault and says what to do.

``UserError`` is the project's one family of errors a user can fix (a file, a key, an input, an
install); the build's ``BuildError`` is one too. ``exit_code`` is the one rule every CLI, build and
board, applies: a user error is one message and exit code 2; anything else is a bug, said to be one,
with its traceback (exit 3).
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable

USER_ERROR = 2
BUG = 3


class UserError(Exception):
    """A problem the user can fix; the message names the file, key, node or input and says what to do."""


class RuntimeLoadError(UserError):
    """The artifact or its manifest is missing, corrupt or not for this runtime."""


class InputSpecError(UserError, ValueError):
    """An input does not match the manifest's spec (name, shape or dtype)."""


class BackendUnavailable(RuntimeLoadError):
    """The artifact's backend library is not installed on this machine."""


class BackendVersionWarning(UserWarning):
    """The backend library loaded here is not the version the build verified the artifact with."""


def say_user_error(where: str, exc: BaseException) -> int:
    print(f"error in {where}: {exc}", file=sys.stderr)
    return USER_ERROR


def say_bug(where: str) -> int:
    traceback.print_exc()
    print(f"internal error in {where}: this is a bug in edgebuild, not in your files or arguments; "
          "please report it with the traceback above", file=sys.stderr)
    return BUG


def exit_code(call: Callable[[], int], where: str, *, user: Callable[[str, BaseException], int] = say_user_error,
              bug: Callable[[str], int] = say_bug) -> int:
    """Run a CLI's body under the error contract; ``user`` and ``bug`` say it (plain text by default:
    a board may have no Rich)."""
    try:
        return call()
    except UserError as exc:
        return user(where, exc)
    except Exception:  # noqa: BLE001 - the contract: a bug is said to be one
        return bug(where)
