"""Errors caused by the user's input, reported as one line instead of a traceback.

nerfstudio's command-line tools (``ns-train``, ``ns-eval``, ...) do not catch exceptions raised by
plugins. Importing this package installs an exception hook that prints a :class:`UserInputError`
as ``error: <message>`` and exits with status 1; every other exception keeps its full traceback.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Optional, Type


class UserInputError(Exception):
    """Bad input from the user (missing or malformed file, wrong option); the message names the file."""


class DataError(UserInputError, ValueError):
    """A dataset folder is missing files or holds inconsistent or unreadable data."""


class OptionError(UserInputError, ValueError):
    """A method option whose value cannot work (out of range, naming a layer that does not exist)."""


class OutputError(UserInputError, OSError):
    """An output file that cannot be written (a directory in its place, a read-only folder)."""


_previous_hook = sys.excepthook


def _excepthook(exc_type: Type[BaseException], exc: BaseException, tb: Optional[TracebackType]) -> None:
    if issubclass(exc_type, UserInputError):
        print(f"error: {exc}", file=sys.stderr)
        return
    _previous_hook(exc_type, exc, tb)


def install_excepthook() -> None:
    """Report :class:`UserInputError` without a traceback (idempotent)."""
    if sys.excepthook is not _excepthook:
        sys.excepthook = _excepthook
