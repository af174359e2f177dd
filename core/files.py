"""Atomic file writes: a file appears whole under its name, or not at all.

Write to a temporary name in the target folder (created exclusively, never through a symlink), fsync it,
then ``os.replace`` it into place: a crash, an exception or an interrupt in between leaves no partial file
under the final name (the temporary one is removed). Node outputs claim their name first with
``RunContext.claim_output`` (see :mod:`reelgraph.outputs`), then write it with :func:`atomic_path`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

#: ``os.open`` flags that create a new file and fail if anything (a file, a symlink) is already there.
EXCLUSIVE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

#: Temporary files are ``.<final name>.<8 hex>.tmp<suffix>`` beside the final name.
TEMP_MARKER = ".tmp"


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_beside(path: str | os.PathLike[str]) -> Path:
    """Create (exclusively, empty) and return a hidden temporary file next to ``path``, with its suffix."""
    target = Path(path)
    while True:
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{TEMP_MARKER}{target.suffix}")
        try:
            os.close(os.open(tmp, EXCLUSIVE_CREATE, 0o644))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed to ``path``, on error
    removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(target)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
