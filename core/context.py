"""The run context: what a running node may ask the engine for (progress, interruption, folders)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NodeInputError, RunInterrupted
from .memory import format_size
from .outputs import Claim, OutputWriter
from .paths import PathNotAllowed, Sandbox


@dataclass
class RunContext:
    """Handed to a node that declares a parameter annotated ``RunContext``; never a graph input.

    ``progress(i, n)`` reports how far a long node has come and is where interruption takes effect:
    call it at every step, and the node stops within one step of an interrupt.
    """

    node_id: str
    node_type: str
    out_dir: Path
    base_dir: Path
    cache_dir: Path | None
    temp_root: Path
    sandbox: Sandbox | None = None
    overwrite: bool | Path = False
    max_memory: int | None = None
    _emit_progress: Callable[[int, int, dict[str, Any]], None] = field(repr=False, default=lambda i, n, e: None)
    _interrupt: threading.Event = field(repr=False, default_factory=threading.Event)
    _claims: list[Claim] = field(repr=False, default_factory=list)
    _emit_stage: Callable[[str], None] = field(repr=False, default=lambda text: None)

    @property
    def _sandbox(self) -> Sandbox:
        if self.sandbox is None:
            self.sandbox = Sandbox(self.base_dir, self.out_dir)
        return self.sandbox

    @property
    def _writer(self) -> OutputWriter:
        return OutputWriter(self._sandbox, self.overwrite)

    def progress(self, i: int, n: int, **extra: Any) -> None:
        """Report step ``i`` of ``n`` (emits ``node_progress``) and stop here if the run was interrupted."""
        self.check_interrupted()
        self._emit_progress(i, n, extra)

    def stage(self, text: str) -> None:
        """Say what the node is doing before it can count steps (``importing torch``, ``reading weights``): emits
        ``node_stage`` with ``text``, which the terminal shows as a line of its own; stops here if interrupted.

        A node's fingerprint may call it too (its key is computed before the node starts).
        """
        self.check_interrupted()
        self._emit_stage(text)

    def check_interrupted(self) -> None:
        """Raise :class:`RunInterrupted` if an interrupt was requested."""
        if self._interrupt.is_set():
            raise RunInterrupted(self.node_id)

    @property
    def temp_dir(self) -> Path:
        """A scratch folder for this node, created on first use and removed when the run ends."""
        folder = self.temp_root / f"node-{abs(hash(self.node_id)):x}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def interrupted(self) -> bool:
        """Whether an interrupt was requested (for nodes that want to stop on their own terms)."""
        return self._interrupt.is_set()

    def check_memory(self, nbytes: int, what: str, input: str | None = None) -> None:
        """Refuse (``too_large``) to allocate ``nbytes`` for ``what`` when that exceeds the run's memory limit.

        Call it before a large allocation, with the input whose value decides its size.
        """
        if self.max_memory is not None and nbytes > self.max_memory:
            raise NodeInputError(
                f"{what} would need about {format_size(nbytes)}, more than the limit of "
                f"{format_size(self.max_memory)}; use fewer frames or smaller sizes, chunking (chunk_frames) or "
                "context windows, or raise --max-memory", input=input, code="too_large")

    def resolve_input(self, path: str | Path, input: str | None = None) -> Path:
        """An input path as the engine resolves workflow paths: relative to the workflow's folder, sandboxed.

        Inputs typed ``InputPath`` arrive resolved already; use this for paths a node computes itself.
        """
        return self._resolve(path, "input", input)

    def resolve_output(self, path: str | Path, input: str | None = None) -> Path:
        """An output path resolved like ``OutputPath`` inputs: relative to the output folder, sandboxed."""
        return self._resolve(path, "output", input)

    def claim_output(self, path: str | Path, input: str | None = None, *, exact: bool = False) -> Path:
        """Claim a file name to write: ``path`` itself, or a free ``name-N.ext`` beside it when a file is
        there that this run may not replace (see :mod:`reelgraph.outputs`). The name is created at once
        (empty), so no other run takes it; write the content with :func:`reelgraph.files.atomic_path` so it
        appears whole. Every file a node writes, derived files included, must be claimed here first.
        With ``exact``, raises ``FileExistsError`` instead of choosing another name."""
        try:
            claim = self._writer.claim(path, exact=exact)
        except PathNotAllowed as exc:
            raise NodeInputError(str(exc), input=input, code="path_not_allowed") from exc
        self._claims.append(claim)
        return claim.path

    def release_claim(self, path: str | Path) -> None:
        """Give back a name this node claimed and did not write (it is removed while still empty)."""
        for claim in [c for c in self._claims if c.path == Path(path)]:
            self._claims.remove(claim)
            self._writer.release(claim)

    def release_claims(self) -> None:
        """Remove the still-empty names this node claimed and never wrote (the engine calls it on failure)."""
        writer = self._writer
        while self._claims:
            writer.release(self._claims.pop())

    def _resolve(self, path: str | Path, kind: str, input: str | None) -> Path:
        try:
            return self._sandbox.resolve(path, kind)  # type: ignore[arg-type]
        except PathNotAllowed as exc:
            raise NodeInputError(str(exc), input=input, code="path_not_allowed") from exc


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("reelgraph_run_context", default=None)


@contextlib.contextmanager
def running(ctx: RunContext) -> Iterator[None]:
    """Mark ``ctx`` as the context of the node running in this thread (the engine wraps every node call)."""
    token = _current.set(ctx)
    try:
        yield
    finally:
        _current.reset(token)


def current_context() -> RunContext | None:
    """The context of the node running in this thread, or None outside a node. Lets library code deep inside
    a node (a torch forward hook, say) notice an interrupt without being handed the context."""
    return _current.get()
