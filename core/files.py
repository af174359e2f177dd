"""Atomic file writes: a file appears whole under its name, or not at all.

Write to a temporary name in the target folder (created exclusively, never through a symlink), fsync it,
then ``os.replace`` it into place: a crash, an exception or an interrupt in between leaves no partial file
under the final name (the temporary one is removed). Node outputs claim their name first with
``RunContext.claim_output`` (see :mod:`reelgraph.outputs`), then write it with :func:`atomic_path`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

#: ``os.open`` flags that create a new file and fail if anything (a file, a symlink) is already there.
EXCLUSIVE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

#: Temporary files are ``.<final name>.<pid>-<8 hex>.tmp<suffix>`` beside the final name.
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
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_MARKER}{target.suffix}")
        try:
            os.close(os.open(tmp, EXCLUSIVE_CREATE, 0o644))
            return tmp
        except FileExistsError:
            continue


_writes = threading.local()
_stop_after_write = threading.Event()


def request_stop_after_write() -> bool:
    """Called by a signal handler: if an atomic write is in progress in this (main) thread, ask for a stop
    once it is published and return True; otherwise return False (stop now)."""
    if getattr(_writes, "depth", 0) > 0:
        _stop_after_write.set()
        return True
    return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed to ``path``, on error
    removed.

    A second Ctrl-C/SIGTERM while the block runs lets the write finish and be published, then raises
    ``KeyboardInterrupt``: a stop never leaves a partial file or a stray temporary one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(target)
    _writes.depth = getattr(_writes, "depth", 0) + 1
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        _writes.depth -= 1
        tmp.unlink(missing_ok=True)
    if _writes.depth == 0 and _stop_after_write.is_set():
        _stop_after_write.clear()
        raise KeyboardInterrupt


RUN_FOLDER = "reelgraph-run-"


def run_folder_prefix() -> str:
    """The prefix of a run's scratch folder in the system temp folder; it names the owning process."""
    return f"{RUN_FOLDER}{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (so its temporary files may still be in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def sweep_run_folders() -> int:
    """Remove scratch folders left by runs whose process is gone (killed); return how many."""
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(f"{RUN_FOLDER}*"):
        pid = folder.name[len(RUN_FOLDER):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def sweep_temporaries(folder: str | os.PathLike[str]) -> int:
    """Remove temporary files of :func:`atomic_path` in ``folder`` left by killed processes; return how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            name = entry.name
            if not (name.startswith(".") and TEMP_MARKER in name and entry.is_file(follow_symlinks=False)):
                continue
            owner = name.rsplit(TEMP_MARKER, 1)[0].rsplit(".", 1)[-1].split("-", 1)[0]
            if owner.isdigit() and not pid_alive(int(owner)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


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
