"""Names that become paths, and writes confined to the run folder.

Scenario keys (a model's or policy's label, a run name) become folder and file names. Two layers keep a
scenario file from writing or deleting anywhere else: every such name is checked at config time to be one
plain path component (:data:`PathName`), and while a run is active every write and delete goes through
:func:`guard`, which refuses a path outside the run folder or one that passes through a symbolic link
inside it (a hostile run folder's ``checkpoints/<job>`` pointing at ``/home/...``).
"""
from __future__ import annotations

import contextlib
import os
import unicodedata
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Iterator

from pydantic import AfterValidator

from statesim.errors import StatesimError

#: Besides letters and digits (any script), the characters a name may hold.
NAME_PUNCTUATION = frozenset("_-.+=@,")
MAX_NAME_LENGTH = 100


class UnsafePathError(StatesimError):
    """A write or delete would leave the run folder or follow a symbolic link inside it."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one plain path component, or None when it can."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"it is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
    if name[0] in ".-":
        return f"it starts with {name[0]!r} (a hidden file, '..', or an option)"
    for char in name:
        if char.isalnum() or char in NAME_PUNCTUATION:
            continue
        if char in "/\\":
            return f"it contains {char!r}, a path separator"
        category = unicodedata.category(char)
        if category[0] in "CZ":  # control, format (bidi overrides such as U+202E), separators, spaces
            return f"it contains the invisible or control character U+{ord(char):04X}"
        return f"it contains {char!r}"
    return None


def _check_name(name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"{name!r} becomes a file or folder name of the run, so it must be a plain folder name "
                         f"(one path component), but {problem}. Use letters, digits and "
                         f"{''.join(sorted(NAME_PUNCTUATION))} only, starting with a letter or digit "
                         f"(e.g. 'lstm_64')")
    return name


def default_run_name(path: Path) -> str:
    """A run name from a scenario file's stem, made a plain folder name (spaces, controls become '_')."""
    stem = "".join(c if c.isalnum() or c in NAME_PUNCTUATION else "_" for c in path.stem).lstrip(".-")
    stem = stem[:MAX_NAME_LENGTH]
    return stem if name_problem(stem) is None else "run"


#: A string that becomes one path component (a job, model, policy or run name); validated by pydantic.
PathName = Annotated[str, AfterValidator(_check_name)]

_root: ContextVar[Path | None] = ContextVar("statesim_write_root", default=None)


@contextlib.contextmanager
def confined(root: str | Path) -> Iterator[Path]:
    """Within this block, :func:`guard` refuses any write or delete outside ``root`` or through a link in it."""
    root = Path(os.path.abspath(root))
    token = _root.set(root)
    try:
        yield root
    finally:
        _root.reset(token)


def guard(path: str | Path) -> Path:
    """``path`` (absolute) when it may be written or deleted now; raises :class:`UnsafePathError` otherwise."""
    target = Path(os.path.abspath(path))
    root = _root.get()
    if root is None:
        return target
    if not target.is_relative_to(root):
        raise UnsafePathError(f"refusing to write {target}: it is outside the run folder {root}. A scenario "
                              f"key or a checkpoint's metadata named a path; use plain names (no '/', '..').")
    current = root
    for part in target.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            raise UnsafePathError(f"refusing to write {target}: {current} is a symbolic link (to "
                                  f"{os.readlink(current)}) inside the run folder {root}, and statesim never "
                                  f"follows links there. Remove the link, or start a new run with another --out.")
    return target


def symlinks_under(folder: str | Path) -> list[Path]:
    """Every symbolic link inside ``folder`` (not following any)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                found.append(path)
    return found


def refuse_symlinks(folder: str | Path, action: str) -> None:
    """Raise :class:`UnsafePathError` when ``folder`` holds a symbolic link (before ``action`` writes in it)."""
    links = symlinks_under(folder)
    if links:
        listed = ", ".join(f"{p} -> {os.readlink(p)}" for p in links[:5]) + (" ..." if len(links) > 5 else "")
        raise UnsafePathError(f"cannot {action} {folder}: it holds symbolic links ({listed}). statesim writes and "
                              f"deletes only inside a run folder and never follows links there; remove them, or "
                              f"start a new run with another --out.")


def remove(path: str | Path) -> None:
    """Delete a file the run owns (guarded like a write); a missing file is fine."""
    guard(path).unlink(missing_ok=True)


__all__ = ["PathName", "UnsafePathError", "confined", "default_run_name", "guard", "name_problem", "refuse_symlinks",
           "remove", "symlinks_under"]
