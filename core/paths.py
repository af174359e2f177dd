"""The path sandbox: every file path a workflow names resolves inside allowed roots.

A workflow is data from strangers, so every path it can make a node read or write is checked, whatever
its origin (a literal, a parameter or a link from another node's output). Node inputs whose type carries a
:class:`PathRole` (:data:`InputPath`, :data:`OutputPath`, :func:`path_input`, also inside ``Optional``,
lists, tuples, sets and dict values) are resolved by the engine and refused with ``path_not_allowed``
when they leave the allowed roots:

* input paths resolve against the workflow file's folder (the current folder for a dict workflow);
* output paths resolve against the output folder (``--out``, default ``./outputs``);
* allowed roots: the workflow's folder, the output folder, and every ``--allow-path`` / ``allow_paths``;
* a path must lie inside a root both as written (``..`` folded lexically) and after following symlinks,
  so neither ``..`` nor a symlink can lead outside, and what lies outside is never looked at;
* output paths follow symlinks in their folders but not in their last part: a file is never written
  through a link (see :mod:`reelgraph.outputs`).

Refusals say only that the path is outside the allowed folders: never whether it exists or where a link
points. The node receives the resolved absolute path (as a ``Path`` or ``str``, matching its annotation).
"""

from __future__ import annotations

import collections.abc
import os
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, get_args, get_origin

PathKind = Literal["input", "output"]


@dataclass(frozen=True)
class PathRole:
    """Marks a ``str``/``Path`` input as a file path: ``input`` (read) or ``output`` (written).

    ``schemes`` lists prefixes that are not paths and pass unchanged (``"builtin:"`` for model sources).
    """

    kind: PathKind
    schemes: tuple[str, ...] = ()


#: An input that reads a file: resolved against the workflow's folder, kept inside the allowed roots.
InputPath = Annotated[Path, PathRole("input")]
#: An input naming a file to write: resolved against the output folder, kept inside the allowed roots.
OutputPath = Annotated[Path, PathRole("output")]

_UNIONS = (typing.Union, types.UnionType)
_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set)
_MAPPINGS = (dict, collections.abc.Mapping)


def path_input(*schemes: str) -> Any:
    """A ``str`` input path that also accepts values starting with ``schemes`` (e.g. ``"builtin:"``) as is."""
    return Annotated[str, PathRole("input", tuple(schemes))]


def find_path_role(annotation: Any) -> PathRole | None:
    """The :class:`PathRole` of a scalar path annotation (also inside ``Optional``), or None."""
    if get_origin(annotation) is Annotated:
        for meta in get_args(annotation)[1:]:
            if isinstance(meta, PathRole):
                return meta
        return find_path_role(get_args(annotation)[0])
    if get_origin(annotation) in _UNIONS:
        roles = [r for r in (find_path_role(a) for a in get_args(annotation)) if r is not None]
        return roles[0] if roles else None
    return None


class PathNotAllowed(ValueError):
    """A path resolves outside every allowed root (or is not a usable path at all)."""


#: ``resolve(value, role) -> resolved value``: what a :data:`PathWalker` calls for each path it finds.
Resolver = Callable[[Any, PathRole], Any]
#: Finds every path inside a value of some annotated type and replaces it by ``resolve(path, role)``.
PathWalker = Callable[[Any, Resolver], Any]


def _scalar_walker(base: Any, role: PathRole) -> PathWalker:
    wants_path = isinstance(base, type) and issubclass(base, PurePath)

    def walk(value: Any, resolve: Resolver) -> Any:
        if value is None:
            return None
        if not isinstance(value, str | os.PathLike):
            raise PathNotAllowed(f"a {type(value).__name__} is not a path")
        resolved = resolve(value, role)
        if isinstance(resolved, str) and wants_path and not (role.schemes and resolved.startswith(role.schemes)):
            return Path(resolved)
        return resolved

    return walk


def _fits(annotation: Any, value: Any) -> bool:
    """Whether ``value`` has the shape of ``annotation`` (container kind or scalar path), to pick a union member."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation) or annotation
    if origin in _MAPPINGS:
        return isinstance(value, collections.abc.Mapping)
    if origin in _SEQUENCES:
        return isinstance(value, list | tuple | set | frozenset)
    if origin in _UNIONS:
        return any(_fits(a, value) for a in get_args(annotation))
    return isinstance(value, str | os.PathLike)


def path_walker(annotation: Any) -> PathWalker | None:
    """A walker that resolves every path-role value inside values of ``annotation``; None when it holds none.

    Understands ``Annotated``, unions (``Optional``), sequences (list, tuple, set) and mappings (keys and values).
    """
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        role = next((m for m in meta if isinstance(m, PathRole)), None)
        if role is not None:
            while get_origin(base) is Annotated:
                base = get_args(base)[0]
            return _scalar_walker(base, role)
        return path_walker(base)
    if origin in _UNIONS:
        members = [(a, w) for a in get_args(annotation) if (w := path_walker(a)) is not None]
        if not members:
            return None

        def walk_union(value: Any, resolve: Resolver) -> Any:
            for member, walker in members:
                if _fits(member, value):
                    return walker(value, resolve)
            return value

        return walk_union
    if origin in _MAPPINGS:
        key_type, value_type = (*get_args(annotation), Any, Any)[:2]
        keys, values = path_walker(key_type), path_walker(value_type)
        if keys is None and values is None:
            return None

        def walk_mapping(value: Any, resolve: Resolver) -> Any:
            if not isinstance(value, collections.abc.Mapping):
                return value
            return {(keys(k, resolve) if keys else k): (values(v, resolve) if values else v) for k, v in value.items()}

        return walk_mapping
    if origin in _SEQUENCES:
        args = get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            walkers = [path_walker(a) for a in args]
            if all(w is None for w in walkers):
                return None

            def walk_fixed(value: Any, resolve: Resolver) -> Any:
                if not isinstance(value, list | tuple):
                    return value
                return tuple(w(v, resolve) if w else v for w, v in zip(walkers, value, strict=False))

            return walk_fixed
        item = path_walker(args[0]) if args else None
        if item is None:
            return None

        def walk_items(value: Any, resolve: Resolver) -> Any:
            if not isinstance(value, list | tuple | set | frozenset):
                return value
            walked = [item(v, resolve) for v in value]
            return walked if isinstance(value, list) else type(value)(walked)

        return walk_items
    return None


def text_form(annotation: Any) -> Any:
    """``annotation`` with every ``Path`` that carries a path role replaced by ``str``.

    A node output typed ``str`` (``format_text``, ``text``) may feed a path input: the engine converts
    and sandboxes it at run time. Link type checks compare against this form too.
    """
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        if any(isinstance(m, PathRole) for m in meta):
            return str
        return text_form(base)
    if origin in _UNIONS:
        return typing.Union[tuple(text_form(a) for a in get_args(annotation))]  # noqa: UP007
    if origin is not None and get_args(annotation) and (origin in _SEQUENCES or origin in _MAPPINGS):
        args = tuple(a if a is Ellipsis else text_form(a) for a in get_args(annotation))
        try:
            return annotation.copy_with(args)  # typing.List[...] and friends
        except AttributeError:
            return types.GenericAlias(origin, args)
    return annotation


def _inside(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


class Sandbox:
    """Resolves workflow paths and refuses those outside the allowed roots.

    ``workflow_file`` (the workflow document itself) and every input path resolved so far are *protected*:
    no output may replace them (see :meth:`is_protected`).
    """

    def __init__(self, base_dir: Path, out_dir: Path, allow: Iterable[str | os.PathLike[str]] = (),
                 workflow_file: Path | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.out_dir = Path(out_dir).resolve()
        given = [Path(base_dir), Path(out_dir), *(Path(p).expanduser() for p in allow)]
        self.roots = list(dict.fromkeys([self.base_dir, self.out_dir, *(p.resolve() for p in given[2:])]))
        lexical = [os.path.normpath(os.path.abspath(p)) for p in given]
        self._resolved_roots = [str(r) for r in self.roots]
        self._lexical_roots = list(dict.fromkeys([*lexical, *self._resolved_roots]))
        self.protected: set[Path] = set()
        if workflow_file is not None:
            self.protected.add(Path(workflow_file).resolve())

    def _refuse(self, value: Any, why: str = "is outside the allowed folders") -> PathNotAllowed:
        roots = ", ".join(self._resolved_roots)
        return PathNotAllowed(f"{_shown(value)} {why} ({roots}); allow a folder with --allow-path DIR")

    def resolve(self, value: str | os.PathLike[str], kind: PathKind) -> Path:
        """The absolute path ``value`` names, checked to lie inside the roots; raises :class:`PathNotAllowed`.

        Inputs are resolved through every symlink. Outputs are resolved through the symlinks of their
        folder only: the last part is kept as it is, so a write lands on that name, never through a link.
        """
        text = os.fspath(value)
        if not isinstance(text, str) or not text or "\x00" in text:
            raise self._refuse(value, "is not a usable path")
        raw = Path(text).expanduser() if text.startswith("~") else Path(text)
        anchor = self.base_dir if kind == "input" else self.out_dir
        lexical = os.path.normpath(raw if raw.is_absolute() else anchor / raw)
        if not _inside(lexical, self._lexical_roots):
            raise self._refuse(value)
        try:
            if kind == "output":
                head, name = os.path.split(lexical)
                if not name:
                    raise self._refuse(value, "names a folder, not a file")
                resolved = Path(head).resolve() / name
            else:
                resolved = Path(lexical).resolve()
        except (OSError, RuntimeError) as exc:  # symlink loops, permissions
            raise self._refuse(value, "cannot be resolved") from exc
        if not _inside(str(resolved), self._resolved_roots):
            raise self._refuse(value)
        return resolved

    def resolve_value(self, value: Any, role: PathRole) -> Any:
        """Resolve one path value carrying ``role`` (None and scheme values pass unchanged); inputs are
        remembered as protected."""
        if value is None or (role.schemes and isinstance(value, str) and value.startswith(role.schemes)):
            return value
        resolved = self.resolve(value, role.kind)
        if role.kind == "input":
            self.protected.add(resolved)
        return str(resolved) if isinstance(value, str) else resolved

    def trusting(self) -> _Trusting:
        """A resolver for paths the user gave (``--set``, ``params=``): see :class:`_Trusting`."""
        return _Trusting(self)

    def trust(self, path: Path, kind: PathKind) -> None:
        """Allow ``path`` (an input file or folder the user named; for an output, its folder) from now on."""
        root = path if kind == "input" else path.parent
        for text in (str(root),):
            if text not in self._resolved_roots:
                self._resolved_roots.append(text)
                self._lexical_roots.append(text)
                self.roots.append(root)

    def is_protected(self, path: Path) -> bool:
        """Whether ``path`` is the workflow file, an input of this run, or inside an input folder."""
        return any(path == p or path.is_relative_to(p) for p in self.protected)


class _Trusting:
    """Resolves the paths a user gave on the command line or in Python: inputs relative to the current folder,
    outputs relative to the output folder, and both allowed wherever they point (the user's intent). The
    resolved path (an input file or folder; an output's folder) becomes an allowed root of the run, so the
    engine's run-time check accepts it too."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def resolve_value(self, value: Any, role: PathRole) -> Any:
        """Like :meth:`Sandbox.resolve_value`, trusting the value."""
        if value is None or (role.schemes and isinstance(value, str) and value.startswith(role.schemes)):
            return value
        text = os.fspath(value)
        if not isinstance(text, str) or not text or "\x00" in text:
            raise self.sandbox._refuse(value, "is not a usable path")
        raw = Path(text).expanduser()
        if role.kind == "input":
            resolved = (raw if raw.is_absolute() else Path.cwd() / raw).resolve()
            self.sandbox.protected.add(resolved)
        else:
            lexical = Path(os.path.normpath(raw if raw.is_absolute() else self.sandbox.out_dir / raw))
            resolved = lexical.parent.resolve() / lexical.name
        self.sandbox.trust(resolved, role.kind)
        return str(resolved) if isinstance(value, str) else resolved


def _shown(value: Any) -> str:
    text = repr(os.fspath(value)) if isinstance(value, str | os.PathLike) else f"a {type(value).__name__}"
    return text if len(text) <= 200 else text[:197] + "..."


def unique_path(path: Path) -> Path:
    """``path`` if no file is there, else the first free ``stem-1.ext``, ``stem-2.ext``, ...

    Only a guess: :mod:`reelgraph.outputs` claims names atomically.
    """
    if not os.path.lexists(path):
        return path
    for i in range(1, 100_000):
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(f"no free name next to {path}")
