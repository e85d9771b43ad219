"""Errors and warnings that point at the user's line, not at the package's insides.

A mistake in a call ("your call is wrong": a missing key, an unknown column or option, a schema
the service cannot use, a key the service refuses) is about the user's line, so in IPython and
Jupyter it shows as the message, then that line, and nothing from inside narrative_pandas
(IPython's ``_render_traceback_`` protocol, on the classes in ``_exceptions``). The full traceback
stays one switch away: ``%tb`` right after the error, or ``NARRATIVE_PANDAS_FULL_TRACEBACK=1``
for every error. Plain ``python script.py`` never asks for ``_render_traceback_`` and keeps
Python's own traceback.
"""

from __future__ import annotations

import linecache
import os
import sys
from types import FrameType, TracebackType
from typing import Any

__all__ = ["FULL_TRACEBACK_ENV", "is_internal", "render_short_traceback", "user_stacklevel"]

FULL_TRACEBACK_ENV = "NARRATIVE_PANDAS_FULL_TRACEBACK"
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_MAX_USER_FRAMES = 3
_HINT = "(frames inside narrative_pandas hidden; %tb shows the full traceback)"


def is_internal(filename: str) -> bool:
    """True for a file of this package (its frames are hidden from the user)."""
    return os.path.abspath(filename).startswith(_PACKAGE)


def user_stacklevel(frame: FrameType | None = None) -> int:
    """The ``warnings.warn`` stacklevel of the first frame outside narrative_pandas.

    Counted from the caller of this function, so a warning lands on the user's line whatever
    path inside the package led to it (pydantic validators, the accessor, ``infer``...).
    """
    current = frame or sys._getframe(1)
    level = 1
    while current is not None and is_internal(current.f_code.co_filename):
        current = current.f_back  # type: ignore[assignment]
        level += 1
    return level


def _wants_full() -> bool:
    return os.environ.get(FULL_TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _user_frames(tb: TracebackType | None) -> list[tuple[str, int]]:
    """(filename, line) of the frames that led into the package, outermost first.

    Frames of IPython and ipykernel (the cell runner) come before the user's own; the walk
    stops at the first frame inside narrative_pandas.
    """
    frames: list[tuple[str, int]] = []
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if is_internal(filename):
            break
        if not _is_runner(filename):
            frames.append((filename, tb.tb_lineno))
        tb = tb.tb_next
    return frames[-_MAX_USER_FRAMES:]


def _is_runner(filename: str) -> bool:
    parts = os.path.normpath(filename).split(os.sep)
    return any(p in ("IPython", "ipykernel", "asyncio", "concurrent") for p in parts[-4:-1])


def _location(filename: str, line: int) -> str:
    shell = _ipython()
    label = None
    if shell is not None:
        try:
            label = shell.compile.format_code_name(filename)
        except Exception:  # an IPython without this hook: the file name will do
            label = None
    if label:
        return f"{label[0]} {label[1]}, line {line}"
    return f'File "{filename}", line {line}'


def _ipython() -> Any:
    module = sys.modules.get("IPython")
    if module is None:
        return None
    try:
        return module.get_ipython()
    except Exception:  # pragma: no cover - IPython half-imported
        return None


def render_short_traceback(exc: BaseException) -> list[str]:
    """The lines IPython shows for ``exc``: its message, the user's line(s), how to see more.

    The second rendering of the same traceback (``%tb``), or any rendering while
    ``NARRATIVE_PANDAS_FULL_TRACEBACK=1`` is set, gives IPython's full traceback instead.
    """
    tb = exc.__traceback__
    again = getattr(exc, "_narrative_rendered_tb", None) is tb
    if _wants_full() or again:
        full = _full_traceback(exc)
        if full is not None:
            return full
    exc._narrative_rendered_tb = tb  # type: ignore[attr-defined]
    lines = [f"{type(exc).__name__}: {exc}", ""]
    for filename, line in _user_frames(tb):
        source = linecache.getline(filename, line).strip()
        lines.append(_location(filename, line))
        if source:
            lines.append(f"----> {source}")
    lines.append(_HINT)
    return lines


def _full_traceback(exc: BaseException) -> list[str] | None:
    shell = _ipython()
    if shell is None:
        return None
    try:
        stb: list[str] = shell.InteractiveTB.structured_traceback(
            type(exc), exc, exc.__traceback__, tb_offset=1
        )
    except Exception:  # pragma: no cover - fall back to the short form
        return None
    return stb
