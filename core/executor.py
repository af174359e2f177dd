"""Runs a validated plan: only the nodes the targets need, in topological order, through the cache.

Each node's cache key is computed from its inputs before it runs; a hit (memory first, then disk)
skips the work. Results are cached as each node finishes, so a failure or an interrupt later in the
run loses nothing already computed. A first SIGINT requests a clean stop (taking effect at the next
``ctx.progress`` tick or between nodes); a second one raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

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

from .cache import DiskCache, MemoryCache, node_key
from .context import RunContext
from .errors import NodeFailed, NodeInputError, ReelgraphError, RunInterrupted
from .events import Event, Sink
from .graph import execution_order
from .paths import PathNotAllowed, Sandbox
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


def _no_progress(i: int, n: int, extra: dict[str, Any]) -> None:
    return None


def _paths_exist(outputs: dict[str, Any]) -> bool:
    return all(Path(v).exists() for v in outputs.values() if isinstance(v, os.PathLike))


@contextmanager
def _sigint_requests(flag: threading.Event) -> Iterator[None]:
    """While running in the main thread, turn the first Ctrl-C into a clean-stop request."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class _RunState:
    """What one run of a plan accumulates: cache keys and node results by node id."""

    plan: Plan
    order: list[str]
    contexts: dict[str, RunContext]
    result: RunResult
    emit: Sink
    keys: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)


class Executor:
    """Executes plans against a memory cache (and optionally a disk cache), emitting events to sinks."""

    def __init__(self, memory: MemoryCache, disk: DiskCache | None = None) -> None:
        self.memory = memory
        self.disk = disk
        self.interrupt_flag = threading.Event()

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
        self.interrupt_flag.clear()

        def emit(ev: Event) -> None:
            for sink in sinks:
                sink(ev)

        started = time.perf_counter()
        temp_root = Path(tempfile.mkdtemp(prefix="reelgraph-run-"))
        contexts = {n: RunContext(n, plan.nodes[n].type.name, sandbox.out_dir, sandbox.base_dir,
                                  self.disk.root if self.disk else None, temp_root, sandbox, overwrite,
                                  max_memory, _no_progress, self.interrupt_flag) for n in order}
        run = _RunState(plan, order, contexts, result, emit)
        try:
            with _sigint_requests(self.interrupt_flag):
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
                self._visit(run, *self._triage(run, [n for n, _ in plan.targets], hits))
        except (NodeFailed, RunInterrupted) as exc:
            result.status = "interrupted" if isinstance(exc, RunInterrupted) else "failed"
            result.seconds = time.perf_counter() - started
            exc.result = result
            emit(Event("run_finished", result.run_id, seconds=result.seconds, message=str(exc),
                       extra={"status": result.status, "ran": len(result.ran), "cached": len(result.cached)}))
            raise
        finally:
            shutil.rmtree(temp_root, ignore_errors=True)
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
        return node_key(nt.name, nt.version, pn.values, upstream, salt=salt)

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
                hit = hit if hit is not None else self._lookup(key, pn)
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
            if self.interrupt_flag.is_set():
                raise RunInterrupted(node_id)
            pn = run.plan.nodes[node_id]
            key = run.keys[node_id]
            if node_id in hits:
                run.values[node_id] = hits[node_id]
                run.result.records[node_id] = NodeRecord(node_id, pn.type.name, "cached", 0.0, key)
                run.emit(Event("node_cached", run.result.run_id, node=node_id, node_type=pn.type.name))
            else:
                run.values[node_id] = self._run_node(pn, run.values, key, run.contexts[node_id], run.result,
                                                     run.emit)

    @staticmethod
    def _literal_kwargs(pn: PlannedNode) -> dict[str, Any]:
        kwargs = {name: port.default for name, port in pn.type.inputs.items() if not port.required}
        kwargs.update(pn.values)
        return kwargs

    def _failed(self, pn: PlannedNode, exc: Exception, seconds: float, result: RunResult, emit: Sink) -> NodeFailed:
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
            outputs = nt.call(kwargs, ctx)
        except RunInterrupted:
            ctx.release_claims()
            raise
        except KeyboardInterrupt as exc:
            ctx.release_claims()
            raise RunInterrupted(pn.id) from exc
        except Exception as exc:
            ctx.release_claims()
            raise self._failed(pn, exc, time.perf_counter() - t0, result, emit) from exc
        ctx._claims.clear()
        seconds = time.perf_counter() - t0
        self.memory.put(key, outputs)
        if self.disk is not None:
            self.disk.put(key, outputs)
        result.records[pn.id] = NodeRecord(pn.id, nt.name, "ran", seconds, key)
        emit(Event("node_finished", result.run_id, node=pn.id, node_type=nt.name, seconds=seconds))
        return outputs

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

    def _lookup(self, key: str, pn: PlannedNode) -> dict[str, Any] | None:
        hit = self.memory.get(key)
        if hit is None and self.disk is not None:
            hit = self.disk.get(key, {n: o.annotation for n, o in pn.type.outputs.items()})
            if hit is not None:
                self.memory.put(key, hit)
        if hit is not None and pn.type.side_effects and not _paths_exist(hit):
            self.memory.discard(key)
            return None
        return hit
