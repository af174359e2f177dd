"""What a node's result depends on besides its inputs: its code and the libraries it runs on.

Cache keys mix in a node type's *code digest* and the versions of the libraries it declares, so a
persistent cache never serves a result computed by other code:

* the code digest is the sha256 of the source files of the package that defines the node's function
  (every ``.py`` file under the package's folder, so helpers the node calls count too), or of the module
  file alone for a plugin given as a single ``.py`` file. Any edit, even to a comment, invalidates the
  results of every node of that package: safe, and cheap to compute (once per package and process);
* library versions come from the installed distributions' metadata (no import), e.g. torch and diffusers
  for the built-in nodes; a node declares them with ``@node(..., libraries=(...))``.

``version=`` on ``@node`` stays available for plugins that want to say "same code, new results".
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: Part of every key: bump when the key layout or the cache's meaning changes.
KEY_FORMAT = 2


@functools.cache
def _digest_files(root: str, single: bool) -> str:
    digest = hashlib.sha256()
    base = Path(root)
    files = [base] if single else sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        digest.update(str(path.relative_to(base.parent if single else base)).encode() + b"\0")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def code_digest(fn: Callable[..., Any]) -> str:
    """The digest of the source that defines ``fn`` (its package's ``.py`` files, or its module file)."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is None:
        return "unknown"
    package = sys.modules.get(module.__package__ or "") if module.__package__ else None
    folders = list(getattr(package, "__path__", []) or [])
    if folders:
        return _digest_files(str(Path(folders[0]).resolve()), single=False)
    file = getattr(module, "__file__", None)
    return _digest_files(str(Path(file).resolve()), single=True) if file else "unknown"


@functools.cache
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(names: Iterable[str]) -> dict[str, str | None]:
    """``{distribution: installed version or None}`` for each name."""
    return {name: _version(name) for name in sorted(set(names))}


def forget_digests() -> None:
    """Recompute digests and versions on next use (after editing a plugin in a long-lived process)."""
    _digest_files.cache_clear()
    _version.cache_clear()
