"""The run context: what a running node may ask the engine for (progress, interruption, folders)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NodeInputError, RunInterrupted
from .memory import format_size
from .paths import PathNotAllowed, Sandbox, unique_path


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
    overwrite: bool = False
    max_memory: int | None = None
    _emit_progress: Callable[[int, int, dict[str, Any]], None] = field(repr=False, default=lambda i, n, e: None)
    _interrupt: threading.Event = field(repr=False, default_factory=threading.Event)

    def progress(self, i: int, n: int, **extra: Any) -> None:
        """Report step ``i`` of ``n`` (emits ``node_progress``) and stop here if the run was interrupted."""
        self.check_interrupted()
        self._emit_progress(i, n, extra)

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

    def claim_output(self, path: str | Path, input: str | None = None) -> Path:
        """Where to write an output: ``path`` itself, or a free ``name-N.ext`` beside it when a file is
        already there and the run was not started with ``overwrite``. Creates the parent folder."""
        target = self.resolve_output(path, input)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target if self.overwrite else unique_path(target)

    def _resolve(self, path: str | Path, kind: str, input: str | None) -> Path:
        sandbox = self.sandbox or Sandbox(self.base_dir, self.out_dir)
        try:
            return sandbox.resolve(path, kind)  # type: ignore[arg-type]
        except PathNotAllowed as exc:
            raise NodeInputError(str(exc), input=input, code="path_not_allowed") from exc
