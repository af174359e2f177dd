"""Batch runs: expand a parameter sweep into runs, record them in a manifest, run them on an executor.

A batch is one workflow run many times with different parameters. Runs come from a JSON-lines file
(one object of parameter overrides per line), a grid (the cartesian product of ``name=v1,v2`` and
``name=A..B`` lists), or both (every line times every grid point), on top of shared ``--set`` values.

Each run's id is a hash of its parameters, so the same run gets the same id and folder
(``<batch>/runs/<id>/``) every time the batch is started. The manifest ``<batch>/batch.jsonl`` holds
one JSON object per run (parameters, status, timings, output paths, error); starting the same batch
again skips the runs it records as finished. A failing run is recorded and the others go on.

Executors run the runs; they share one small interface (:class:`BatchExecutor`). :class:`LocalExecutor`
runs them one after another on one in-process :class:`~reelgraph.Engine`, so loaded models and cached
results carry over between runs; ``reelgraph.batch_ray.RayExecutor`` spreads them over Ray actors.
This module never imports torch or ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from .api import Engine
from .errors import NodeFailed, ReelgraphError, RunInterrupted, WorkflowInvalid
from .events import Event, Sink
from .executor import describe_value
from .files import atomic_path
from .workflow import ParamSpec

try:
    import fcntl
except ImportError:  # not POSIX: the manifest is not locked (one batch per folder at a time)
    fcntl = None  # type: ignore[assignment]

#: File name of the manifest inside the batch folder.
MANIFEST_NAME = "batch.jsonl"
#: Folder inside the batch folder that holds one output folder per run.
RUNS_DIR = "runs"
#: The most runs one batch may have: a larger grid or params file is refused before it is expanded.
MAX_RUNS = 100_000
#: Engine events forwarded even when per-node events are off: enough to follow runs and failures.
RUN_EVENTS = frozenset({"run_started", "run_finished", "node_failed"})

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class BatchSpecError(ReelgraphError, ValueError):
    """A batch description is malformed: a bad ``--grid``, ``--set`` or params line (a usage error).

    Raised before anything runs, because every run it touches would fail the same way.
    """


class BatchError(ReelgraphError):
    """An executor cannot run the batch at all (Ray missing, no worker could start)."""


# --- expansion ---------------------------------------------------------------------------------------


def coerce_param(value: Any, spec: ParamSpec) -> Any:
    """Convert a parameter value to its declared type where that is unambiguous; else return it unchanged.

    Text (from the command line, or a string in a params line) becomes an ``int``/``float``/``bool`` or
    parsed JSON; an integer for a ``float`` parameter becomes a float. This makes ``seed=3`` on the
    command line and ``{"seed": 3}`` in a file the same run (same id). A value that cannot be converted
    is kept as given, so the engine rejects that run alone with ``invalid_value``.
    """
    kind = spec.type
    if isinstance(value, str):
        text = value.strip()
        try:
            if kind == "int":
                return int(text)
            if kind == "float":
                return float(text)
            if kind == "bool" and text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            if kind == "json":
                return json.loads(value)
        except ValueError:
            return value
        return value
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_name(name: str, specs: Mapping[str, ParamSpec], where: str) -> ParamSpec:
    spec = specs.get(name)
    if spec is None:
        declared = ", ".join(sorted(specs)) or "none"
        raise BatchSpecError(f"{where}: parameter {name!r} is not declared by the workflow (declared: {declared})")
    return spec


def split_values(text: str) -> list[str]:
    """Split a grid value list on commas that are not inside JSON brackets, braces or strings."""
    items: list[str] = []
    depth, in_string, escaped, start = 0, False, False, 0
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def parse_grid(items: Sequence[str], specs: Mapping[str, ParamSpec]) -> list[tuple[str, list[Any]]]:
    """Parse ``--grid`` arguments: ``name=v1,v2,...``, where an item ``A..B`` is the integers A to B inclusive.

    Returns ``(name, values)`` pairs in the order given; values are converted to the parameter's type.
    """
    axes: list[tuple[str, list[Any]]] = []
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BatchSpecError(f"--grid wants NAME=V1,V2 or NAME=A..B, got {item!r}")
        spec = _check_name(name, specs, f"--grid {item!r}")
        if any(name == seen for seen, _ in axes):
            raise BatchSpecError(f"--grid names parameter {name!r} twice; give all its values in one --grid")
        values: list[Any] = []
        for part in split_values(text):
            match = _RANGE.match(part.strip())
            if match:
                lo, hi = int(match[1]), int(match[2])
                if hi < lo:
                    raise BatchSpecError(f"--grid {item!r}: range {part.strip()} is empty (lower bound first)")
                if len(values) + hi - lo + 1 > MAX_RUNS:  # counted, not built
                    raise BatchSpecError(f"--grid {item!r}: {len(values) + hi - lo + 1:,} values; a batch has at "
                                         f"most {MAX_RUNS:,} runs (split it into several batches)")
                values.extend(coerce_param(str(v), spec) for v in range(lo, hi + 1))
            elif part.strip() == "":
                raise BatchSpecError(f"--grid {item!r}: empty value (a stray comma?)")
            else:
                values.append(coerce_param(part, spec))
        axes.append((name, values))
    return axes


def parse_sets(items: Sequence[str], specs: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Parse ``--set NAME=VALUE`` arguments into typed values shared by every run."""
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BatchSpecError(f"--set wants NAME=VALUE, got {item!r}")
        values[name] = coerce_param(text, _check_name(name, specs, f"--set {item!r}"))
    return values


def read_params_file(path: str | Path, specs: Mapping[str, ParamSpec]) -> list[dict[str, Any]]:
    """Read a JSON-lines file of parameter overrides: one JSON object per line; blank lines are skipped.

    A line that is not a JSON object, or names an undeclared parameter, is an error naming the line.
    """
    rows: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BatchSpecError(f"cannot read params file {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BatchSpecError(f"{where}: not valid JSON: {exc.msg} at column {exc.colno}") from exc
        if not isinstance(row, dict):
            raise BatchSpecError(f"{where}: each line must be a JSON object of parameter values, got {line.strip()!r}")
        rows.append({k: coerce_param(v, _check_name(k, specs, where)) for k, v in row.items()})
    if not rows:
        raise BatchSpecError(f"params file {path} holds no runs")
    return rows


def count_params(rows: Sequence[Mapping[str, Any]] | None = None,
                 grid: Sequence[tuple[str, Sequence[Any]]] = ()) -> int:
    """How many parameter sets :func:`iter_params` yields (before duplicates are merged), without building them."""
    return len(rows or [{}]) * math.prod(len(values) for _, values in grid)


def iter_params(
    sets: Mapping[str, Any] | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
    grid: Sequence[tuple[str, Sequence[Any]]] = (),
) -> Iterator[dict[str, Any]]:
    """Every run's parameter overrides, one at a time: each params row times each grid point, over ``sets``.

    Later sources win for the same name: ``sets`` < a params row < a grid value. The grid's last axis
    varies fastest. With neither rows nor grid there is one run. More than :data:`MAX_RUNS` sets is a
    :class:`BatchSpecError`, raised before the first one is built.
    """
    total = count_params(rows, grid)
    if total > MAX_RUNS:
        raise BatchSpecError(f"the grid and params give {total:,} runs; a batch has at most {MAX_RUNS:,} "
                             "(split it into several batches)")
    names = [name for name, _ in grid]
    for row in rows or [{}]:
        for combo in itertools.product(*(vals for _, vals in grid)):
            yield {**(sets or {}), **row, **dict(zip(names, combo, strict=True))}


def expand_params(
    sets: Mapping[str, Any] | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
    grid: Sequence[tuple[str, Sequence[Any]]] = (),
) -> list[dict[str, Any]]:
    """:func:`iter_params` as a list."""
    return list(iter_params(sets, rows, grid))


def run_id_for(params: Mapping[str, Any]) -> str:
    """A run's stable id: 12 hex digits of the SHA-256 of its parameters as canonical JSON."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class RunSpec:
    """One run of a batch: its stable id, position, parameter overrides and output folder (absolute)."""

    run_id: str
    index: int
    params: dict[str, Any]
    out_dir: str


def make_runs(param_sets: Iterable[Mapping[str, Any]], batch_dir: str | Path) -> list[RunSpec]:
    """Turn parameter sets into runs with ids and folders under ``batch_dir/runs``; duplicates run once."""
    root = Path(batch_dir).resolve() / RUNS_DIR
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for params in param_sets:
        run_id = run_id_for(params)
        if run_id in seen:
            continue
        seen.add(run_id)
        runs.append(RunSpec(run_id, len(runs), dict(params), str(root / run_id)))
    return runs


# --- what a worker needs, and what it returns ---------------------------------------------------------


@dataclass(frozen=True)
class EngineSettings:
    """How a worker builds its :class:`Engine`; plain data, so it can be sent to remote workers."""

    plugins: tuple[Any, ...] = ()
    cache_dir: str | None = None
    entry_points: bool = True
    env: bool = True

    def build(self) -> Engine:
        """A new engine with these plugins and caches."""
        return Engine(self.plugins, cache_dir=self.cache_dir, entry_points=self.entry_points, env=self.env)


@dataclass(frozen=True)
class BatchJob:
    """What every run of a batch shares: the workflow file, requested outputs and how to build engines.

    ``detail_events`` forwards every engine event (node progress too) instead of only :data:`RUN_EVENTS`;
    ``keep_values`` returns each run's output values (tensors, say) to the caller, not only their
    description in the manifest.
    """

    workflow: str
    outputs: tuple[str, ...] | None = None
    allow_paths: tuple[str, ...] = ()
    engine: EngineSettings = EngineSettings()
    detail_events: bool = True
    keep_values: bool = False


@dataclass
class RunOutcome:
    """How one run went: ``finished``, ``failed`` or ``interrupted``, when, where, and what it produced.

    ``outputs`` maps ``"node.output"`` to a path (as text) or a short description; ``values`` holds the
    values themselves when the job asked for them. ``error`` has ``code``, ``node``, ``node_type``,
    ``input`` and ``message`` (validation failures add ``problems``).
    """

    run_id: str
    status: str
    worker: str
    started_at: float
    finished_at: float
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    values: dict[str, Any] | None = None


def failed_outcome(run_id: str, worker: str, code: str, message: str, started_at: float | None = None) -> RunOutcome:
    """An outcome for a run that failed outside the engine (its worker died, no worker started)."""
    now = time.time()
    start = started_at if started_at is not None else now
    return RunOutcome(run_id, "failed", worker, start, now, now - start,
                      error={"code": code, "node": None, "node_type": None, "input": None, "message": message})


def finished_event(outcome: RunOutcome) -> Event:
    """A ``run_finished`` event for a run that ended outside the engine's own events (it failed validation,
    or its worker died), so that event consumers see every run end."""
    error = outcome.error or {}
    return Event("run_finished", outcome.run_id, seconds=outcome.seconds, message=error.get("message"),
                 extra={"status": outcome.status, "code": error.get("code"), "ran": 0, "cached": 0})


def _error_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, WorkflowInvalid):
        first = exc.problems[0] if exc.problems else None
        return {"code": first.code if first else "invalid", "node": first.node if first else None,
                "node_type": None, "input": first.input if first else None,
                "message": "; ".join(str(p) for p in exc.problems), "problems": [p.to_dict() for p in exc.problems]}
    if isinstance(exc, NodeFailed):
        return {"code": exc.code, "node": exc.node, "node_type": exc.node_type, "input": exc.input,
                "message": exc.message}
    if isinstance(exc, RunInterrupted):
        return {"code": "interrupted", "node": exc.node, "node_type": None, "input": None, "message": str(exc)}
    return {"code": "internal_error", "node": None, "node_type": None, "input": None,
            "message": f"{type(exc).__name__}: {exc}"}


def _exit_error(exc: BaseException, running: Mapping[str, str]) -> dict[str, Any]:
    """The error of a run that raised a ``BaseException`` (``SystemExit``, say): ``node_failed`` at the node
    that was running when it was raised, else ``internal_error``."""
    message = f"{type(exc).__name__}: {exc}; a node must raise an exception, not end the process"
    if running:
        node, node_type = list(running.items())[-1]
        return {"code": "node_failed", "node": node, "node_type": node_type or None, "input": None,
                "message": message}
    return {"code": "internal_error", "node": None, "node_type": None, "input": None, "message": message}


class RunWorker:
    """Runs the runs of batches on one :class:`Engine`, one at a time, never raising for a failed run.

    A run that raises ``SystemExit`` (a node calling ``sys.exit``) or any other ``BaseException`` except
    ``KeyboardInterrupt`` is a failed run too (``node_failed`` at the node that was running).

    The engine lives as long as the worker, so a model loaded by one run is still loaded (and its
    results still cached) for the next. Both executors use it: in-process, and inside each Ray actor.
    """

    def __init__(self, settings: EngineSettings = EngineSettings(), name: str = "local",
                 engine: Engine | None = None) -> None:
        self.name = name
        self.engine = engine if engine is not None else settings.build()

    def run(self, job: BatchJob, spec: RunSpec, sink: Sink | None = None) -> RunOutcome:
        """Run one run into its folder; engine events go to ``sink`` tagged with the run's id."""

        running: dict[str, str] = {}  # the node in flight (id -> type), to name it if it exits the process

        def tagged(ev: Event) -> None:
            if ev.event == "node_started" and ev.node:
                running[ev.node] = ev.node_type or ""
            elif ev.event in ("node_finished", "node_failed") and ev.node:
                running.pop(ev.node, None)
            if sink is None or not (job.detail_events or ev.event in RUN_EVENTS):
                return
            extra = {**ev.extra, "execution_id": ev.run_id}
            if ev.event == "run_started":
                extra["worker"] = self.name
            sink(dataclasses.replace(ev, run_id=spec.run_id, extra=extra))

        started, t0 = time.time(), time.perf_counter()
        result, error, status = None, None, "finished"
        try:
            # The run's folder is its own: a re-run replaces its files there (overwrite inside it only) instead of
            # adding name-1.ext; files elsewhere (the workflow's folder, say) are never replaced.
            result = self.engine.run(job.workflow, spec.params, list(job.outputs) if job.outputs else None,
                                     out_dir=spec.out_dir, allow_paths=job.allow_paths,
                                     overwrite=Path(spec.out_dir),
                                     events=[tagged])
        except (WorkflowInvalid, NodeFailed, RunInterrupted) as exc:
            result = getattr(exc, "result", None)
            error, status = _error_of(exc), "interrupted" if isinstance(exc, RunInterrupted) else "failed"
        except Exception as exc:  # a bug in a node's validator or the engine: this run fails, the batch goes on
            error, status = _error_of(exc), "failed"
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # sys.exit() or another BaseException in a node: this run fails, not the batch
            error, status = _exit_error(exc, running), "failed"
        outcome = RunOutcome(spec.run_id, status, self.name, started, time.time(), time.perf_counter() - t0,
                             error=error)
        if result is not None:
            outcome.nodes = {r.node: {"status": r.status, "seconds": round(r.seconds, 6)}
                             for r in result.records.values()}
            outcome.outputs = {k: describe_value(v) for k, v in result.outputs.items()}
            if job.keep_values and status == "finished":
                outcome.values = dict(result.outputs)
        if result is None and sink is not None:  # the engine emitted nothing (invalid): say it started and ended
            sink(Event("run_started", spec.run_id, extra={"nodes": 0, "worker": self.name}))
            sink(finished_event(outcome))
        return outcome


# --- executors ----------------------------------------------------------------------------------------


class BatchExecutor(Protocol):
    """Runs a batch's runs somewhere and yields each outcome as it completes (in any order).

    ``emit`` receives the tagged engine events; an executor calls it from the caller's thread only.
    An executor stops early (yielding nothing more) after a run comes back ``interrupted``.
    """

    name: str

    def execute(self, job: BatchJob, runs: Sequence[RunSpec], emit: Sink) -> Iterator[RunOutcome]:
        """Run ``runs`` and yield their outcomes."""
        ...

    def close(self) -> None:
        """Release workers (and anything the executor started)."""
        ...


class LocalExecutor:
    """Runs one run after another on one in-process engine: models and cached results carry over.

    Pass ``engine`` to share an existing engine (and its caches); otherwise one is built from the job's
    :class:`EngineSettings` on first use and kept while the settings stay the same.
    """

    name = "local"

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine
        self._worker: RunWorker | None = None
        self._settings: EngineSettings | None = None

    def _worker_for(self, settings: EngineSettings) -> RunWorker:
        if self._worker is None or (self._engine is None and settings != self._settings):
            self._worker = RunWorker(settings, "local", self._engine)
            self._settings = settings
        return self._worker

    def execute(self, job: BatchJob, runs: Sequence[RunSpec], emit: Sink) -> Iterator[RunOutcome]:
        """Run ``runs`` in order; stop after an interrupted run (the rest stay to be resumed)."""
        worker = self._worker_for(job.engine)
        for spec in runs:
            outcome = worker.run(job, spec, emit)
            yield outcome
            if outcome.status == "interrupted":
                return

    def interrupt(self) -> None:
        """Ask the current run to stop at its next progress tick (thread-safe)."""
        if self._worker is not None:
            self._worker.engine.interrupt()

    def close(self) -> None:
        """Nothing to release: the engine is garbage-collected with the executor."""


# --- the manifest -------------------------------------------------------------------------------------


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes: which version of the workflow a manifest record ran."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Manifest:
    """The batch manifest: a JSON-lines file of run records; the latest record of a run id is its state.

    The file is append-only while batches run: a record is added when a run starts (``running``) and when it
    ends (its outcome), so a crash loses nothing, and several batches (processes, threads) may share one
    folder. Every write holds an exclusive ``fcntl.flock`` on the lock file ``batch.jsonl.lock`` beside it
    and opens the manifest afresh, so records never interleave and none is lost. When a batch ends it
    compacts the file (one line per run) under the same lock, from what is on disk (every batch's records,
    not only its own), through a uniquely named temporary file (:func:`reelgraph.files.atomic_path`).
    Readers take the last line of each run id and ignore lines that do not parse (a write cut short).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """Hold the manifest's lock (exclusive, or shared for reading) for the ``with`` block."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return records
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("run_id"), str):
                records.pop(record["run_id"], None)
                records[record["run_id"]] = record
        return records

    def load(self) -> dict[str, dict[str, Any]]:
        """The latest record of every run in the file, by run id (empty when there is no file)."""
        with self.locked(shared=True):
            return self._read()

    def append(self, record: Mapping[str, Any]) -> None:
        """Add one record at the end (it supersedes earlier records of the same run), under the lock."""
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        with self.locked(), self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def compact(self, order: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """Rewrite the file with the latest record of each run, ``order`` first, then any other runs it
        holds (other batches' included), under the lock; returns those records."""
        with self.locked():
            records = self._read()
            first = [i for i in order if i in records]
            ids = first + [i for i in records if i not in set(first)]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(records[i], default=str, ensure_ascii=False) + "\n" for i in ids),
                               encoding="utf-8")
        return records


def is_finished(record: Mapping[str, Any] | None, digest: str, outputs: Sequence[str] | None) -> bool:
    """Whether a manifest record shows this run done for the same workflow version and outputs.

    Output files the run wrote must still exist: deleting a run's folder makes it run again.
    """
    if not record or record.get("status") != "finished" or record.get("workflow_digest") != digest:
        return False
    if (record.get("requested_outputs") or None) != (list(outputs) if outputs else None):
        return False
    paths = [Path(v) for v in (record.get("outputs") or {}).values() if isinstance(v, str) and os.path.isabs(v)]
    return all(p.exists() for p in paths)


def _record(spec: RunSpec, job: BatchJob, digest: str, outcome: RunOutcome | None, started: float) -> dict[str, Any]:
    record: dict[str, Any] = {
        "run_id": spec.run_id, "index": spec.index, "params": spec.params, "status": "running",
        "out_dir": spec.out_dir, "workflow": job.workflow, "workflow_digest": digest,
        "requested_outputs": list(job.outputs) if job.outputs else None, "started_at": _iso(started),
    }
    if outcome is not None:
        record.update(status=outcome.status, started_at=_iso(outcome.started_at),
                      finished_at=_iso(outcome.finished_at), seconds=round(outcome.seconds, 6),
                      worker=outcome.worker, outputs=outcome.outputs, nodes=outcome.nodes, error=outcome.error)
    return record


# --- running a batch ----------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """A batch's outcome: the final manifest record of each of its runs, and what happened this time.

    ``runs`` lists every run id in the batch's order; ``records`` holds the runs that have a record (a run
    not started yet has none); ``outcomes`` holds the runs executed now (with ``values`` when the job
    kept them); ``skipped`` lists the runs already finished before.
    """

    batch_id: str
    batch_dir: Path
    manifest: Path
    runs: list[str]
    records: dict[str, dict[str, Any]]
    outcomes: dict[str, RunOutcome]
    skipped: list[str]
    status: str
    seconds: float

    def count(self, status: str) -> int:
        """How many of the batch's runs have this status in the manifest (``finished``, ``failed``, ...)."""
        return sum(1 for r in self.records.values() if r.get("status") == status)

    @property
    def not_run(self) -> list[str]:
        """Ids of the runs that neither finished nor failed (interrupted, or never started)."""
        return [i for i in self.runs if self.records.get(i, {}).get("status") not in ("finished", "failed")]

    @property
    def failed(self) -> list[str]:
        """Ids of the runs whose latest record is ``failed``."""
        return [i for i, r in self.records.items() if r.get("status") == "failed"]


def batch_id_for(digest: str, runs: Sequence[RunSpec]) -> str:
    """The batch's id: a hash of the workflow version and the set of run ids (order does not matter)."""
    return hashlib.sha256((digest + "\n" + "\n".join(sorted(r.run_id for r in runs))).encode()).hexdigest()[:12]


def run_batch(
    job: BatchJob,
    runs: Sequence[RunSpec],
    batch_dir: str | Path,
    executor: BatchExecutor | None = None,
    *,
    events: Iterable[Sink] = (),
    force: bool = False,
) -> BatchResult:
    """Run every run not already finished, recording each in ``batch_dir/batch.jsonl``.

    Runs the manifest shows finished (same workflow file content, same requested outputs, output files
    still there) are skipped unless ``force``. A failed run is recorded and the others go on. Events
    to ``events``: ``batch_started``, ``run_skipped``, the engine's events tagged with each run's id
    (``run_id``), and ``batch_finished``; every event carries ``batch_id``. The executor defaults to a
    new :class:`LocalExecutor` and is not closed here.
    """
    sinks = list(events)
    batch_dir = Path(batch_dir).resolve()
    batch_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(batch_dir / MANIFEST_NAME)
    digest = file_digest(job.workflow)
    batch_id = batch_id_for(digest, runs)
    records = manifest.load()
    by_id = {r.run_id: r for r in runs}
    skipped = [] if force else [r.run_id for r in runs if is_finished(records.get(r.run_id), digest, job.outputs)]
    todo = [r for r in runs if r.run_id not in set(skipped)]
    executor = executor if executor is not None else LocalExecutor()

    def emit(ev: Event) -> None:
        ev.extra["batch_id"] = batch_id
        if ev.event == "run_started" and ev.run_id in by_id:
            manifest.append(_record(by_id[ev.run_id], job, digest, None, ev.time))
        for sink in sinks:
            sink(ev)

    started, t0 = time.time(), time.perf_counter()
    emit(Event("batch_started", batch_id, extra={"runs": len(runs), "to_run": len(todo), "skipped": len(skipped),
                                                 "executor": executor.name, "batch_dir": str(batch_dir)}))
    for run_id in skipped:
        emit(Event("run_skipped", run_id, extra={"status": "finished"}))
    outcomes: dict[str, RunOutcome] = {}
    status = "interrupted"
    stream = executor.execute(job, todo, emit) if todo else iter(())
    try:
        for outcome in stream:
            manifest.append(_record(by_id[outcome.run_id], job, digest, outcome, started))
            outcomes[outcome.run_id] = outcome
        if len(outcomes) == len(todo) and all(o.status != "interrupted" for o in outcomes.values()):
            status = "finished"
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        records = manifest.compact([r.run_id for r in runs])
        mine = {r.run_id: records[r.run_id] for r in runs if r.run_id in records}
        counts = {s: sum(1 for r in mine.values() if r.get("status") == s) for s in ("finished", "failed")}
        emit(Event("batch_finished", batch_id, seconds=time.perf_counter() - t0,
                   extra={"status": status, "runs": len(runs), "skipped": len(skipped), **counts,
                          "not_run": len(runs) - sum(counts.values())}))
    return BatchResult(batch_id, batch_dir, manifest.path, [r.run_id for r in runs], mine, outcomes, skipped, status,
                       time.perf_counter() - t0)


def plan_batch(
    workflow: str | Path,
    batch_dir: str | Path,
    *,
    sets: Sequence[str] | Mapping[str, Any] = (),
    params_file: str | Path | None = None,
    grid: Sequence[str] = (),
) -> list[RunSpec]:
    """Read the workflow's parameter declarations and expand ``sets``, a params file and a grid into runs.

    ``sets`` is either ``NAME=VALUE`` texts or a mapping. Raises :class:`BatchSpecError` for a
    malformed description and :class:`WorkflowInvalid` for a workflow that does not parse.
    """
    from .api import read_workflow

    wf, problems, _ = read_workflow(Path(workflow))
    if wf is None or problems:
        raise WorkflowInvalid(problems)
    specs = wf.params
    base = (parse_sets(list(sets), specs) if not isinstance(sets, Mapping)
            else {k: coerce_param(v, _check_name(k, specs, "params")) for k, v in sets.items()})
    rows = read_params_file(params_file, specs) if params_file is not None else None
    return make_runs(iter_params(base, rows, parse_grid(grid, specs)), batch_dir)


__all__ = [
    "MANIFEST_NAME",
    "MAX_RUNS",
    "RUNS_DIR",
    "BatchError",
    "BatchExecutor",
    "BatchJob",
    "BatchResult",
    "BatchSpecError",
    "EngineSettings",
    "LocalExecutor",
    "Manifest",
    "RunOutcome",
    "RunSpec",
    "RunWorker",
    "coerce_param",
    "count_params",
    "expand_params",
    "failed_outcome",
    "file_digest",
    "finished_event",
    "iter_params",
    "make_runs",
    "parse_grid",
    "parse_sets",
    "plan_batch",
    "read_params_file",
    "run_batch",
    "run_id_for",
]
