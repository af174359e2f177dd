"""The server's workers: N threads, each with its own long-lived :class:`~reelgraph.Engine`, running queued jobs.

One engine per worker keeps that worker's models loaded and its in-memory cache warm across jobs; all workers
share one disk cache (``<state-dir>/cache``), so a job that was running when the server died re-runs from it.
Because each engine runs one job at a time, ``Engine.interrupt()`` on a worker's engine stops exactly the job
that worker is running: that is how a running job is cancelled. (One shared engine would stop every job.)

A job runs from its own folder, ``<state-dir>/jobs/<id>/``: the submitted document is ``workflow.json`` there,
relative inputs resolve there, relative outputs land there, and outputs may replace files only there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import Engine
from .errors import NodeFailed, RunInterrupted, WorkflowInvalid
from .events import Event
from .executor import RunResult, describe_value
from .files import atomic_write_text
from .server_events import EventHub
from .server_store import JobRow, JobStore, StoreFull

log = logging.getLogger("reelgraph.server")

#: The submitted document's name inside a job's folder.
WORKFLOW_NAME = "workflow.json"


@dataclass(frozen=True)
class RunSettings:
    """How workers build their engines and run jobs: plugins, the shared disk cache, extra allowed folders."""

    plugins: tuple[str, ...] = ()
    cache_dir: str | None = None
    cache_size: int | None = None
    allow_paths: tuple[str, ...] = ()
    entry_points: bool = True

    def engine(self) -> Engine:
        """A new engine with these plugins and the shared disk cache."""
        return Engine(self.plugins, cache_dir=self.cache_dir, cache_size=self.cache_size,
                      entry_points=self.entry_points)


def describe_outputs(outputs: Mapping[str, Any], job_dir: Path) -> dict[str, Any]:
    """Output values as JSON: a file inside the job's folder by its name there, others as the engine shows them."""
    out: dict[str, Any] = {}
    for key, value in outputs.items():
        if isinstance(value, os.PathLike):
            path = Path(value)
            with contextlib.suppress(ValueError):
                out[key] = path.resolve().relative_to(job_dir.resolve()).as_posix()
                continue
        out[key] = describe_value(value)
    return out


def error_of(exc: BaseException) -> dict[str, Any]:
    """A run's error as ``{code, node, input, message}`` (validation failures add every problem)."""
    if isinstance(exc, WorkflowInvalid):
        first = exc.problems[0] if exc.problems else None
        return {"code": first.code if first else "bad_format", "node": first.node if first else None,
                "input": first.input if first else None, "message": first.message if first else str(exc),
                "problems": [p.to_dict() for p in exc.problems]}
    if isinstance(exc, NodeFailed):
        return {"code": exc.code, "node": exc.node, "input": exc.input, "message": exc.message,
                "node_type": exc.node_type}
    if isinstance(exc, RunInterrupted):
        return {"code": "interrupted", "node": exc.node, "input": None, "message": "cancelled"}
    return {"code": "internal_error", "node": None, "input": None, "message": f"{type(exc).__name__}: {exc}"}


@dataclass
class _Running:
    engine: Engine
    cancel: threading.Event = field(default_factory=threading.Event)


class WorkerPool:
    """``workers`` threads taking jobs from the store; :meth:`cancel` interrupts the one running a job."""

    def __init__(self, store: JobStore, hub: EventHub, jobs_dir: Path, settings: RunSettings, workers: int = 1,
                 engine_factory: Callable[[], Engine] | None = None) -> None:
        self.store = store
        self.hub = hub
        self.jobs_dir = jobs_dir
        self.settings = settings
        self.workers = workers
        self._engine_factory = engine_factory or settings.engine
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._cancel_asked: set[str] = set()
        self._threads: list[threading.Thread] = []
        #: How many workers have built their engine and take jobs.
        self.ready = 0

    def start(self) -> None:
        """Start the worker threads (each builds its engine first)."""
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, args=(i,), name=f"reelgraph-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        """A job was queued: let an idle worker look now rather than at its next poll."""
        self._kick.set()

    def busy(self) -> int:
        """How many jobs are running now."""
        with self._lock:
            return len(self._running)

    def cancel(self, job_id: str) -> None:
        """Interrupt the job if a worker is running it (or is about to): it stops at its next step."""
        with self._lock:
            running = self._running.get(job_id)
            if running is None:
                self._cancel_asked.add(job_id)  # claimed but not started yet: the worker checks this set
                return
            running.cancel.set()
            running.engine.interrupt()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, interrupt running ones (they go back to the queue) and wait for the threads."""
        self._stopping.set()
        self._kick.set()
        with self._lock:
            for running in self._running.values():
                running.engine.interrupt()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- the worker thread --------------------------------------------------------------------------------

    def _loop(self, index: int) -> None:
        name = f"worker-{index}@{socket.gethostname()}:{os.getpid()}"
        engine = self._engine_factory()
        with self._lock:
            self.ready += 1
        while not self._stopping.is_set():
            try:
                job = self.store.claim(name)
            except Exception as exc:  # disk full, locked for too long: try again shortly
                log.warning("%s cannot claim a job: %s", name, exc)
                self._stopping.wait(1.0)
                continue
            if job is None:
                self._kick.wait(1.0)
                self._kick.clear()
                continue
            self._run(engine, job)

    def _run(self, engine: Engine, job: JobRow) -> None:
        assert job.claim is not None
        job_dir = self.jobs_dir / job.id
        workflow = job_dir / WORKFLOW_NAME
        running = _Running(engine)
        with self._lock:
            self._running[job.id] = running
            if job.id in self._cancel_asked or job.cancel_requested:
                self._cancel_asked.discard(job.id)
                running.cancel.set()

        def sink(ev: Event) -> None:
            self.hub.publish(job.id, ev.to_dict())
            if running.cancel.is_set() or self._stopping.is_set():
                engine.interrupt()  # this engine runs only this job

        result: RunResult | None = None
        error: dict[str, Any] | None = None
        status = "finished"
        try:
            if not workflow.exists():  # the folder is made at submission; restore it if it went missing
                job_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(workflow, json.dumps(job.workflow, indent=2))
            if running.cancel.is_set():
                raise RunInterrupted()
            result = engine.run(workflow, job.params, job.outputs, out_dir=job_dir,
                                allow_paths=self.settings.allow_paths, overwrite=job_dir, events=[sink],
                                trust_params=False)
        except RunInterrupted as exc:
            result = exc.result  # type: ignore[assignment]
            if not running.cancel.is_set():  # the server is stopping: run it again after the restart
                self._forget(job.id)
                with contextlib.suppress(Exception):
                    self.store.release(job.id, job.claim)
                return
            status, error = "cancelled", error_of(exc)
        except (WorkflowInvalid, NodeFailed) as exc:
            result = getattr(exc, "result", None)
            status, error = "failed", error_of(exc)
        except Exception as exc:  # a bug outside any node, or the job folder cannot be written
            log.exception("job %s failed outside the engine", job.id)
            status, error = "failed", error_of(exc)
        self._forget(job.id)
        record: dict[str, Any] = {"outputs": {}, "nodes": {}, "seconds": None, "worker": job.worker}
        if result is not None:
            record["outputs"] = describe_outputs(result.outputs, job_dir)
            record["nodes"] = {r.node: {"status": r.status, "seconds": round(r.seconds, 6)}
                               for r in result.records.values()}
            record["seconds"] = round(result.seconds, 6)
        self._record(job, status, record, error)

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)
            self._cancel_asked.discard(job_id)

    def _record(self, job: JobRow, status: str, record: dict[str, Any], error: dict[str, Any] | None) -> None:
        """Write the outcome; while the disk is full, keep trying (the job stays ``running`` meanwhile)."""
        assert job.claim is not None
        delay = 0.2
        while True:
            try:
                if self.store.complete(job.id, job.claim, status, record, error):
                    self.hub.end(job.id, status)
                return
            except StoreFull as exc:
                log.warning("cannot record the end of job %s yet: %s", job.id, exc)
            if self._stopping.wait(delay):
                return  # still 'running' in the store: the next start re-runs it from the cache
            delay = min(delay * 2, 5.0)
