"""Errors caused by the user's input, reported as one line instead of a traceback.

nerfstudio's command-line tools (``ns-train``, ``ns-eval``, ...) do not catch exceptions raised by
plugins. Importing this package installs an exception hook that prints a :class:`UserInputError`
as ``error: <message>`` and exits with status 1, and does the same for a checkpoint that torch cannot
read while nerfstudio loads it (a truncated save); every other exception keeps its full traceback.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
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


def unreadable_checkpoint(exc: BaseException, tb: Optional[TracebackType]) -> Optional[str]:
    """The one-line message for ``exc`` when torch failed to read a checkpoint that nerfstudio's
    loaders (their local ``load_path``) were loading, else None."""
    if not isinstance(exc, (RuntimeError, OSError, EOFError, pickle.UnpicklingError)):
        return None
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not any(frame.f_globals.get("__name__") == "torch.serialization" for frame in frames):
        return None
    path = next(
        (f.f_locals["load_path"] for f in reversed(frames) if isinstance(f.f_locals.get("load_path"), Path)), None
    )
    if path is None:
        return None
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{path}: unreadable checkpoint ({reason}); it may be truncated: delete it to use the one before"


def _excepthook(exc_type: Type[BaseException], exc: BaseException, tb: Optional[TracebackType]) -> None:
    if issubclass(exc_type, UserInputError):
        print(f"error: {exc}", file=sys.stderr)
        return
    checkpoint = unreadable_checkpoint(exc, tb)
    if checkpoint is not None:  # the interpreter exits with status 1 after the hook, as for any exception
        print(f"error: {checkpoint}", file=sys.stderr)
        return
    _previous_hook(exc_type, exc, tb)


def install_excepthook() -> None:
    """Report :class:`UserInputError` without a traceback (idempotent)."""
    if sys.excepthook is not _excepthook:
        sys.excepthook = _excepthook
