"""Runs a validated plan: only the nodes the targets need, in topological order, through the cache.

Each node's cache key is computed from its inputs before it runs; a hit (memory first, then disk)
skips the work. Results are cached as each node finishes, so a failure or an interrupt later in the
run loses nothing already computed. A first SIGINT requests a clean stop (taking effect at the next
``ctx.progress`` tick or between nodes); a second one raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import files
from .cache import DiskCache, MemoryCache, node_key
from .context import RunContext, running
from .errors import NodeFailed, NodeInputError, NodeOutputError, ReelgraphError, RunInterrupted
from .events import Event, Sink
from .graph import execution_order
from .paths import PathNotAllowed, Sandbox
from .types import type_name, value_fits
from .validate import Plan, PlannedNode


@dataclass
class NodeRecord:
    """How one node fared in a run: ``ran`` or ``cached``, the seconds it took, and its cache key."""

    node: str
    type: str
    status: str
    seconds: float
    key: str


@dataclass
class RunResult:
    """The outcome of a run: requested outputs by ``"node.output"``, and a record per node."""

    run_id: str
    outputs: dict[str, Any] = field(default_factory=dict)
    records: dict[str, NodeRecord] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    status: str = "running"

    @property
    def ran(self) -> list[str]:
        """Ids of the nodes that actually ran (in order)."""
        return [r.node for r in self.records.values() if r.status == "ran"]

    @property
    def cached(self) -> list[str]:
        """Ids of the nodes served from the cache (in order)."""
        return [r.node for r in self.records.values() if r.status == "cached"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able run record (outputs shown by type and short repr)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "seconds": round(self.seconds, 6),
            "params": {k: str(v) if isinstance(v, os.PathLike) else v for k, v in self.params.items()},
            "nodes": [r.__dict__ for r in self.records.values()],
            "outputs": {k: describe_value(v) for k, v in self.outputs.items()},
        }


def describe_value(value: Any) -> Any:
    """A JSON-able stand-in for an output value: paths as text, scalars as is, else a short repr."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _emit_stage(emit: Sink, run_id: str, node_id: str, node_type: str, text: str) -> None:
    emit(Event("node_stage", run_id, node=node_id, node_type=node_type, message=str(text)))


def _no_progress(i: int, n: int, extra: dict[str, Any]) -> None:
    return None


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


@contextmanager
def _stop_requests(flag: threading.Event) -> Iterator[None]:
    """While running in the main thread, turn the first Ctrl-C or SIGTERM into a clean-stop request.

    A second signal stops at once (``KeyboardInterrupt``), except during an atomic file write, which
    finishes first (see :func:`reelgraph.files.defer_interrupts`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set() and not files.request_stop_after_write():
            raise KeyboardInterrupt
        flag.set()

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class _RunState:
    """What one run of a plan accumulates: cache keys and node results by node id."""

    plan: Plan
    order: list[str]
    contexts: dict[str, RunContext]
    result: RunResult
    emit: Sink
    flag: threading.Event
    keys: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str | None = None


class Executor:
    """Executes plans against a memory cache (and optionally a disk cache), emitting events to sinks."""

    def __init__(self, memory: MemoryCache, disk: DiskCache | None = None) -> None:
        self.memory = memory
        self.disk = disk
        self._active: set[threading.Event] = set()
        self._active_lock = threading.Lock()

    def interrupt(self) -> None:
        """Ask every run in progress on this executor to stop at its next progress tick or node boundary."""
        with self._active_lock:
            for flag in self._active:
                flag.set()

    def run(self, plan: Plan, *, sandbox: Sandbox, overwrite: bool | Path = False, max_memory: int | None = None,
            sinks: Iterable[Sink] = ()) -> RunResult:
        """Run the plan's targets; raise :class:`NodeFailed` or :class:`RunInterrupted` on failure.

        ``overwrite``: outputs may replace existing files (``True``), only inside that folder (a ``Path``), or
        never (``False``: a free ``name-N.ext`` is used). Either exception carries the partial
        :class:`RunResult` as ``.result``.
        """
        sinks = list(sinks)
        result = RunResult(run_id=uuid.uuid4().hex[:12], params=dict(plan.params))
        order = execution_order(plan.graph, [n for n, _ in plan.targets])
        flag = threading.Event()  # this run's own: runs in other threads are stopped separately
        with self._active_lock:
            self._active.add(flag)

        def emit(ev: Event) -> None:
            for sink in sinks:
                sink(ev)

        started = time.perf_counter()
        files.sweep_run_folders()
        temp_root = Path(tempfile.mkdtemp(prefix=files.run_folder_prefix()))
        contexts = {n: RunContext(n, plan.nodes[n].type.name, sandbox.out_dir, sandbox.base_dir,
                                  self.disk.root if self.disk else None, temp_root, sandbox, overwrite,
                                  max_memory, _no_progress, flag) for n in order}
        for node_id, ctx in contexts.items():
            ctx._emit_stage = functools.partial(_emit_stage, emit, result.run_id, node_id, ctx.node_type)
        run = _RunState(plan, order, contexts, result, emit, flag)
        try:
            with _stop_requests(flag):
                deferred = self._keys(run)
                hits, to_run = self._triage(run, [n for n, _ in plan.targets])
                visit = [n for n in order if n in hits or n in to_run]
                emit(Event("run_started", result.run_id, extra={"nodes": len(visit), "workflow": plan.workflow.name}))
                for node_id in deferred:
                    # A loader fed a path by link: its key needs that path (resolved), so get it first.
                    sources = [link.node for name, link in plan.nodes[node_id].links.items()
                               if plan.nodes[node_id].type.inputs[name].paths is not None]
                    if sources:
                        self._visit(run, *self._triage(run, sources, hits))
                    run.keys[node_id] = self._key(run, node_id)
                try:
                    self._visit(run, *self._triage(run, [n for n, _ in plan.targets], hits))
                except KeyboardInterrupt as exc:  # a second signal, between nodes or in the engine's own work
                    raise RunInterrupted(run.current) from exc
        except (NodeFailed, RunInterrupted) as exc:
            result.status = "interrupted" if isinstance(exc, RunInterrupted) else "failed"
            result.seconds = time.perf_counter() - started
            exc.result = result
            emit(Event("run_finished", result.run_id, seconds=result.seconds, message=str(exc),
                       extra={"status": result.status, "ran": len(result.ran), "cached": len(result.cached)}))
            raise
        finally:
            shutil.rmtree(temp_root, ignore_errors=True)
            with self._active_lock:
                self._active.discard(flag)
        for node_id, out in plan.targets:
            names = [out] if out else list(plan.nodes[node_id].type.outputs)
            for name in names:
                result.outputs[f"{node_id}.{name}"] = run.values[node_id][name]
        result.status = "finished"
        result.seconds = time.perf_counter() - started
        emit(Event("run_finished", result.run_id, seconds=result.seconds,
                   extra={"status": "finished", "ran": len(result.ran), "cached": len(result.cached)}))
        return result

    def _keys(self, run: _RunState) -> list[str]:
        """Compute every cache key that needs no node's result; return the nodes whose key must wait (in order).

        A node whose fingerprint reads a path that arrives by link must wait for that link's value, and so
        must every node downstream of it. All other keys are known before anything runs.
        """
        deferred: list[str] = []
        waiting: set[str] = set()
        for node_id in run.order:
            pn = run.plan.nodes[node_id]
            path_links = pn.type.fingerprint is not None and any(
                pn.type.inputs[name].paths is not None for name in pn.links)
            if path_links or any(link.node in waiting for link in pn.links.values()):
                waiting.add(node_id)
                deferred.append(node_id)
            else:
                run.keys[node_id] = self._key(run, node_id)
        return deferred

    def _key(self, run: _RunState, node_id: str) -> str:
        pn = run.plan.nodes[node_id]
        nt = pn.type
        ctx = run.contexts[node_id]
        upstream = {name: (run.keys[link.node], link.output) for name, link in pn.links.items()}
        salt: Any = f"{pn.id}@{ctx.out_dir}" if nt.side_effects else None
        if nt.fingerprint is not None:
            kwargs = self._literal_kwargs(pn)
            for name, link in pn.links.items():
                if nt.inputs[name].paths is not None:
                    kwargs[name] = run.values[link.node][link.output]
            self._resolve_paths(pn, kwargs, ctx, run.result, run.emit, only=set(pn.links))
            try:
                salt = [salt, nt.fingerprint(kwargs, ctx)]
            except Exception as exc:
                raise self._failed(pn, exc, 0.0, run.result, run.emit) from exc
        return node_key(nt.name, nt.version, pn.values, upstream, salt=salt, code=nt.code_identity())

    def _triage(self, run: _RunState, wanted: list[str], prefetched: dict[str, dict[str, Any]] | None = None
                ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Split the nodes that ``wanted`` need into cache hits and nodes to run, walking back from them.

        A cached node's inputs are not needed, so whole upstream branches (model loading, say) are
        skipped when everything that consumes them is cached. Nodes already computed in this run are
        skipped; a node whose key is not known yet counts as one to run.
        """
        needed = set(wanted)
        hits: dict[str, dict[str, Any]] = {}
        to_run: set[str] = set()
        for node_id in reversed(run.order):
            if node_id not in needed or node_id in run.values:
                continue
            pn = run.plan.nodes[node_id]
            key = run.keys.get(node_id)
            hit = None
            if key is not None:
                hit = prefetched.pop(node_id, None) if prefetched is not None else None
                hit = hit if hit is not None else self._lookup(key, pn, run)
            if hit is not None:
                hits[node_id] = hit
            else:
                to_run.add(node_id)
                needed.update(link.node for link in pn.links.values())
        return hits, to_run

    def _visit(self, run: _RunState, hits: dict[str, dict[str, Any]], to_run: set[str]) -> None:
        """Take the hits and run the rest, in topological order."""
        for node_id in run.order:
            if node_id not in hits and node_id not in to_run:
                continue
            if run.flag.is_set():
                raise RunInterrupted(node_id)
            run.current = node_id
            pn = run.plan.nodes[node_id]
            key = run.keys[node_id]
            if node_id in hits:
                run.values[node_id] = hits[node_id]
                run.result.records[node_id] = NodeRecord(node_id, pn.type.name, "cached", 0.0, key)
                run.emit(Event("node_cached", run.result.run_id, node=node_id, node_type=pn.type.name))
            else:
                run.values[node_id] = self._run_node(pn, run.values, key, run.contexts[node_id], run.result,
                                                     run.emit)
        run.current = None

    @staticmethod
    def _literal_kwargs(pn: PlannedNode) -> dict[str, Any]:
        kwargs = {name: port.default for name, port in pn.type.inputs.items() if not port.required}
        kwargs.update(pn.values)
        return kwargs

    def _failed(self, pn: PlannedNode, exc: BaseException, seconds: float, result: RunResult, emit: Sink) -> NodeFailed:
        message = str(exc) if isinstance(exc, ReelgraphError) else f"{type(exc).__name__}: {exc}"
        code, input_name = "node_failed", None
        if isinstance(exc, NodeInputError):
            code, input_name = exc.code, exc.input
        emit(Event("node_failed", result.run_id, node=pn.id, node_type=pn.type.name, seconds=seconds,
                   message=message, extra={"code": code, "input": input_name, "plugin": pn.type.plugin}))
        return NodeFailed(pn.id, pn.type.name, message, code=code, input=input_name, plugin=pn.type.plugin)

    def _run_node(self, pn: PlannedNode, values: dict[str, dict[str, Any]], key: str, ctx: RunContext,
                  result: RunResult, emit: Sink) -> dict[str, Any]:
        nt = pn.type
        kwargs = self._literal_kwargs(pn)
        for name, link in pn.links.items():
            kwargs[name] = values[link.node][link.output]
        self._resolve_paths(pn, kwargs, ctx, result, emit)
        emit(Event("node_started", result.run_id, node=pn.id, node_type=nt.name))

        def on_progress(i: int, n: int, extra: dict[str, Any]) -> None:
            emit(Event("node_progress", result.run_id, node=pn.id, node_type=nt.name, i=i, n=n, extra=extra))

        ctx._emit_progress = on_progress
        t0 = time.perf_counter()
        try:
            with running(ctx):
                outputs = nt.call(kwargs, ctx)
            self._check_outputs(pn, outputs)
        except RunInterrupted:
            ctx.release_claims()
            raise
        except KeyboardInterrupt as exc:
            ctx.release_claims()
            raise RunInterrupted(pn.id) from exc
        except Exception as exc:
            ctx.release_claims()
            raise self._failed(pn, exc, time.perf_counter() - t0, result, emit) from exc
        except BaseException as exc:  # SystemExit from a node must not end the process or a batch
            ctx.release_claims()
            raise self._failed(pn, exc, time.perf_counter() - t0, result, emit) from exc
        ctx._claims.clear()
        seconds = time.perf_counter() - t0
        meta = _written(outputs) if nt.side_effects else None
        self.memory.put(key, outputs, meta)
        if self.disk is not None:
            outcome = self.disk.store(key, outputs, meta)
            if outcome.status == "failed":
                emit(Event("cache_warning", result.run_id, node=pn.id, node_type=nt.name,
                           message=f"result not cached on disk: {outcome.message}", extra={"reason": "write_failed"}))
        result.records[pn.id] = NodeRecord(pn.id, nt.name, "ran", seconds, key)
        emit(Event("node_finished", result.run_id, node=pn.id, node_type=nt.name, seconds=seconds))
        return outputs

    @staticmethod
    def _check_outputs(pn: PlannedNode, outputs: dict[str, Any]) -> None:
        """Refuse (``bad_output``) a value that is not of the node's declared output type."""
        for name, port in pn.type.outputs.items():
            value = outputs.get(name)
            if not value_fits(value, port.annotation):
                raise NodeOutputError(f"output {name!r} is declared {type_name(port.annotation)} but the node "
                                      f"returned a {type(value).__name__}")

    def _resolve_paths(self, pn: PlannedNode, kwargs: dict[str, Any], ctx: RunContext, result: RunResult,
                       emit: Sink, only: set[str] | None = None) -> None:
        """Resolve and sandbox every path the node is about to receive (or fingerprint), whatever its origin
        (literal, parameter or link): the one place where paths enter nodes."""
        sandbox = ctx.sandbox
        assert sandbox is not None
        for name, port in pn.type.inputs.items():
            if port.paths is None or name not in kwargs or (only is not None and name not in only):
                continue
            try:
                kwargs[name] = port.paths(kwargs[name], sandbox.resolve_value)
            except PathNotAllowed as exc:
                error = NodeInputError(str(exc), input=name, code="path_not_allowed")
                raise self._failed(pn, error, 0.0, result, emit) from None

    def _lookup(self, key: str, pn: PlannedNode, run: _RunState) -> dict[str, Any] | None:
        entry = self.memory.entry(key)
        if entry is None and self.disk is not None:
            read = self.disk.read(key, {n: o.annotation for n, o in pn.type.outputs.items()})
            if read.problem is not None:
                run.emit(Event("cache_warning", run.result.run_id, node=pn.id, node_type=pn.type.name,
                               message=f"cache entry ignored and removed: {read.problem}",
                               extra={"reason": "corrupt"}))
            if read.outputs is not None:
                entry = (read.outputs, read.meta)
                self.memory.put(key, *entry)
        if entry is None:
            return None
        outputs, meta = entry
        if pn.type.side_effects and not _unchanged(meta):
            self.memory.discard(key)
            return None
        return outputs


def _file_facts(path: Path) -> list[Any] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _written(outputs: dict[str, Any]) -> dict[str, Any]:
    """What a side-effecting node wrote: each path output's size, mtime and sha256."""
    from .cache import _sha256_file

    facts: dict[str, Any] = {}
    for value in outputs.values():
        if isinstance(value, os.PathLike) and (stat := _file_facts(Path(value))) is not None:
            try:
                facts[os.fspath(value)] = [*stat, _sha256_file(Path(value)) if Path(value).is_file() else None]
            except OSError:
                continue
    return {"files": facts}


def _unchanged(meta: Any) -> bool:
    """Whether every file a side-effecting node wrote is still there as it wrote it (size and content)."""
    from .cache import _sha256_file

    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return False
    for name, (size, mtime, digest) in meta["files"].items():
        stat = _file_facts(Path(name))
        if stat is None or stat[0] != size:
            return False
        if stat[1] != mtime:
            try:
                if digest is None or _sha256_file(Path(name)) != digest:
                    return False
            except OSError:
                return False
    return True
