"""The path sandbox: every file path a workflow names resolves inside allowed roots.

A workflow is data from strangers, so the paths in it are checked before anything runs. Node inputs
typed :data:`InputPath` / :data:`OutputPath` (or built with :func:`path_input`) are resolved by the
engine and refused with ``path_not_allowed`` when they leave the allowed roots:

* input paths resolve against the workflow file's folder (the current folder for a dict workflow);
* output paths resolve against the output folder (``--out``, default ``./outputs``);
* allowed roots: the workflow's folder, the output folder, and every ``--allow-path`` / ``allow_paths``;
* ``..`` and symlinks are followed before the check, so neither can lead outside.

The node receives the resolved absolute path (as a ``Path`` or ``str``, matching its annotation).
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin


@dataclass(frozen=True)
class PathRole:
    """Marks a ``str``/``Path`` input as a file path: ``input`` (read) or ``output`` (written).

    ``schemes`` lists prefixes that are not paths and pass unchanged (``"builtin:"`` for model sources).
    """

    kind: Literal["input", "output"]
    schemes: tuple[str, ...] = ()


#: An input that reads a file: resolved against the workflow's folder, kept inside the allowed roots.
InputPath = Annotated[Path, PathRole("input")]
#: An input naming a file to write: resolved against the output folder, kept inside the allowed roots.
OutputPath = Annotated[Path, PathRole("output")]


def path_input(*schemes: str) -> Any:
    """A ``str`` input path that also accepts values starting with ``schemes`` (e.g. ``"builtin:"``) as is."""
    return Annotated[str, PathRole("input", tuple(schemes))]


def find_path_role(annotation: Any) -> PathRole | None:
    """The :class:`PathRole` in an annotation (also inside ``Optional``), or None."""
    if get_origin(annotation) is Annotated:
        for meta in get_args(annotation)[1:]:
            if isinstance(meta, PathRole):
                return meta
        return find_path_role(get_args(annotation)[0])
    if get_origin(annotation) in (typing.Union, types.UnionType):
        roles = [r for r in (find_path_role(a) for a in get_args(annotation)) if r is not None]
        return roles[0] if roles else None
    return None


class PathNotAllowed(ValueError):
    """A path resolves outside every allowed root."""


class Sandbox:
    """Resolves workflow paths and refuses those outside the allowed roots."""

    def __init__(self, base_dir: Path, out_dir: Path, allow: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.out_dir = Path(out_dir).resolve()
        self.roots = [self.base_dir, self.out_dir, *(Path(p).expanduser().resolve() for p in allow)]

    def resolve(self, value: str | os.PathLike[str], kind: Literal["input", "output"]) -> Path:
        """The absolute, symlink-free path ``value`` names; raises :class:`PathNotAllowed` outside the roots."""
        raw = Path(value).expanduser()
        anchor = self.base_dir if kind == "input" else self.out_dir
        resolved = (raw if raw.is_absolute() else anchor / raw).resolve()
        if not any(resolved == root or resolved.is_relative_to(root) for root in self.roots):
            roots = ", ".join(str(r) for r in self.roots)
            raise PathNotAllowed(f"{str(value)!r} resolves to {resolved}, outside the allowed folders ({roots}); "
                                 "allow it with --allow-path DIR")
        return resolved

    def resolve_value(self, value: Any, role: PathRole) -> Any:
        """Resolve a validated input value carrying ``role`` (None and scheme values pass unchanged)."""
        if value is None or (isinstance(value, str) and value.startswith(role.schemes) and role.schemes):
            return value
        resolved = self.resolve(value, role.kind)
        return str(resolved) if isinstance(value, str) else resolved


def unique_path(path: Path) -> Path:
    """``path`` if no file is there, else the first free ``stem-1.ext``, ``stem-2.ext``, ..."""
    if not path.exists():
        return path
    for i in range(1, 100_000):
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free name next to {path}")
