"""The one way a node writes a file: a name claimed atomically inside the sandbox, content published whole.

Every file a node writes, including the files it derives (a report's JSON twin and copied assets, sidecars),
is first claimed through :class:`OutputWriter` (nodes reach it as ``ctx.claim_output(path, input)``) and then
written with :func:`reelgraph.files.atomic_path`:

* the path is resolved by the :class:`~reelgraph.paths.Sandbox` (relative to the output folder) and must stay
  inside the allowed roots; the last part is never followed if it is a symlink;
* the final name is *claimed* by creating it exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``), so two runs
  writing ``race.mp4`` at once get ``race.mp4`` and ``race-1.mp4``, never the same file;
* an existing file is replaced only when the run may overwrite (``--overwrite``, or, for batch runs, only
  inside the run's own folder), and never when it is a symlink, a folder, the workflow file or an input of the
  run (or inside an input folder): such a name counts as taken, and the next free ``name-N.ext`` is used;
* content goes to a hidden temporary file beside the final name (created exclusively), is fsynced, and is
  moved over the claimed name with ``os.replace`` (which replaces a name, never writes through a link); when
  the node fails, its temporary files and its still-empty claims are removed.

A claim is an empty file until the content lands; only a killed process (SIGKILL, power loss) can leave one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .files import EXCLUSIVE_CREATE, sweep_temporaries
from .paths import PathNotAllowed, Sandbox

_MAX_NAMES = 10_000


@dataclass
class Claim:
    """A final file name this run holds: ``created`` when the claim made it (an empty placeholder)."""

    path: Path
    created: bool
    inode: tuple[int, int] | None = None


def _exclusive_create(path: Path) -> tuple[int, int]:
    fd = os.open(path, EXCLUSIVE_CREATE, 0o644)
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)


class OutputWriter:
    """Claims a run's output file names (see the module docs). Safe across threads and processes: every
    decision is one atomic filesystem call."""

    def __init__(self, sandbox: Sandbox, overwrite: bool | Path = False) -> None:
        self.sandbox = sandbox
        self.overwrite = overwrite

    def may_replace(self, path: Path) -> bool:
        """Whether this run may replace an existing file at ``path`` (ignoring what the file is)."""
        if isinstance(self.overwrite, Path):
            scope = self.overwrite.resolve()
            return path == scope or path.is_relative_to(scope)
        return bool(self.overwrite)

    def _replaceable(self, path: Path) -> bool:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        return (self.may_replace(path) and stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                and not self.sandbox.is_protected(path))

    def claim(self, path: str | os.PathLike[str], *, exact: bool = False) -> Claim:
        """Claim ``path`` (resolved under the output folder), or the first free ``stem-N.ext`` beside it.

        With ``exact``, only ``path`` itself: raises ``FileExistsError`` when it is taken. Raises
        :class:`~reelgraph.paths.PathNotAllowed` outside the sandbox.
        """
        target = self.sandbox.resolve(path, "output")
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(target.parent)
        if self.sandbox.resolve(target, "output") != target:  # a folder became a link meanwhile
            raise PathNotAllowed(f"{str(path)!r} changed while it was being resolved")
        for n in range(_MAX_NAMES):
            candidate = target if n == 0 else target.with_name(f"{target.stem}-{n}{target.suffix}")
            if self._replaceable(candidate):
                return Claim(candidate, created=False)
            try:
                return Claim(candidate, created=True, inode=_exclusive_create(candidate))
            except FileExistsError:
                if exact:
                    raise
            except IsADirectoryError:
                if exact:
                    raise FileExistsError(f"{candidate} is a folder") from None
        raise FileExistsError(f"no free name next to {target}")

    def release(self, claim: Claim) -> None:
        """Give a claim back: remove the placeholder if it is still the empty file this claim created."""
        if not claim.created:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(claim.path)
            if (st.st_dev, st.st_ino) == claim.inode and st.st_size == 0:
                os.unlink(claim.path)
