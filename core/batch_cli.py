"""The ``reelgraph batch`` subcommand: run a workflow over a parameter sweep, locally or on Ray.

``add_batch_parser(subparsers)`` adds the subcommand to the ``reelgraph`` parser and ``cmd_batch(args)``
runs it; ``reelgraph batch WF.json ...`` is the way to call it.

Exit codes (as for ``reelgraph run``): 0 every run finished (now or before); 1 the workflow does not
parse; 2 bad command line, params file or executor set-up (Ray missing); 3 some run failed (the
others still ran; the manifest says why); 130 interrupted (finished runs are kept; start the same
batch again to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .api import DEFAULT_OUT_DIR, Engine
from .batch import (
    MANIFEST_NAME,
    BatchError,
    BatchExecutor,
    BatchJob,
    BatchResult,
    BatchSpecError,
    EngineSettings,
    LocalExecutor,
    plan_batch,
    run_batch,
)
from .errors import WorkflowInvalid
from .events import Event, jsonl_sinks

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def add_batch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to an ``add_subparsers()`` object; returns its parser."""
    p = subparsers.add_parser(
        "batch", help="run a workflow many times: a parameter grid and/or one run per JSON line",
        description="Run a workflow once per parameter set. Each run gets a stable id (a hash of its parameters) "
                    f"and its own folder OUT/runs/ID/; OUT/{MANIFEST_NAME} records every run. Starting the same "
                    "batch again skips the runs already finished.")
    p.add_argument("workflow", help="workflow JSON file")
    p.add_argument("--params", metavar="RUNS.jsonl", default=None,
                   help="one JSON object of parameter values per line, one run per line")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2|NAME=A..B",
                   help="sweep a parameter (repeatable: the runs are the cartesian product; A..B is inclusive)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="sets",
                   help="a parameter value shared by every run (repeatable)")
    p.add_argument("--output", action="append", default=None, metavar="NODE[.OUTPUT]",
                   help="run only what this output needs (repeatable; default: all terminal nodes)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"batch folder (default: {DEFAULT_OUT_DIR}/<workflow name>-batch)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one engine in this process, runs in sequence (default); ray: a pool of Ray actors")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to use (auto, HOST:6379, ray://HOST:10001; default: $RAY_ADDRESS or a new "
                        "local Ray)")
    p.add_argument("--actors", type=int, default=None, metavar="N",
                   help="Ray actors (default: one per GPU, else one per --cpus-per-actor CPUs)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs each Ray actor asks for")
    p.add_argument("--gpus-per-actor", type=float, default=None, metavar="G",
                   help="GPUs each Ray actor asks for (default: 1 where the cluster has GPUs, else 0)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="persist results across runs and processes")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR", dest="allow_paths",
                   help="also allow the workflow to read and write under DIR (repeatable)")
    p.add_argument("--force", action="store_true", help="run every run again, even those already finished")
    p.add_argument("--dry-run", action="store_true", help="print the runs (id, params, folder) and run nothing")
    p.add_argument("--events", choices=["jsonl"], default=None,
                   help="stream every run's events as JSON lines (each with its run_id and batch_id)")
    p.add_argument("--events-file", default=None, metavar="FILE", help="write events there instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                   help="load a plugin from a .py file or module (repeatable; also $REELGRAPH_PLUGINS)")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for unexpected errors")
    return p


class BatchProgress:
    """One line for the whole batch on stderr: a bar, runs done, failed, running and skipped, and time.

    On a terminal the line redraws in place; elsewhere (logs, CI) one line is printed per finished run.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 20) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.total = self.skipped = self.finished = self.failed = 0
        self.running: set[str] = set()
        self.started = self._drawn = time.monotonic()

    def line(self) -> str:
        """The status line as it stands."""
        done = self.finished + self.failed + self.skipped
        filled = int(self.width * done / self.total) if self.total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        parts = [f"{self.finished + self.skipped} done", f"{self.failed} failed", f"{len(self.running)} running"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return f"batch [{bar}] {done}/{self.total} | {', '.join(parts)} | {time.monotonic() - self.started:.1f}s"

    def _show(self, note: str = "", final: bool = False) -> None:
        self._drawn = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        elif note or final:
            self.stream.write(self.line() + (f"  {note}" if note else "") + "\n")
        self.stream.flush()

    def __call__(self, ev: Event) -> None:
        if ev.event == "batch_started":
            self.total, self.skipped = int(ev.extra.get("runs", 0)), int(ev.extra.get("skipped", 0))
            self.started = time.monotonic()
            self._show()
        elif ev.event == "run_started":
            self.running.add(ev.run_id)
            self._show()
        elif ev.event == "run_finished":
            self.running.discard(ev.run_id)
            status = ev.extra.get("status")
            note = ""
            if status == "finished":
                self.finished += 1
                note = f"{ev.run_id} finished in {ev.seconds or 0:.1f}s"
            elif status == "failed":
                self.failed += 1
                note = f"{ev.run_id} FAILED: {ev.message}"
            if self.tty and note and status == "failed":
                self.stream.write("\r\033[K" + note + "\n")
                note = ""
            self._show(note)
        elif ev.event == "batch_finished":
            self._show(final=True)
        elif self.tty and time.monotonic() - self._drawn >= 0.1:  # node events: keep the clock moving
            self._show()


def _summary(result: BatchResult, stream: TextIO) -> None:
    finished, failed, not_run = result.count("finished"), result.count("failed"), len(result.not_run)
    text = f"{len(result.runs)} run(s): {finished} finished"
    if result.skipped:
        text += f" ({len(result.skipped)} finished earlier, skipped)"
    text += f", {failed} failed"
    if not_run:
        text += f", {not_run} not finished"
    stream.write(f"{text} in {result.seconds:.1f}s\n")
    for run_id in result.failed:
        record = result.records[run_id]
        error = record.get("error") or {}
        where = f" at node {error['node']!r}" if error.get("node") else ""
        where += f" input {error['input']!r}" if error.get("input") else ""
        stream.write(f"  failed {run_id} {json.dumps(record.get('params'))}: {error.get('code')}{where}: "
                     f"{error.get('message')}\n")
    stream.write(f"manifest: {result.manifest}\n")


def _executor(args: argparse.Namespace, engine: Engine | None) -> BatchExecutor:
    if args.executor == "local":
        for flag, value in (("--address", args.address), ("--actors", args.actors),
                            ("--gpus-per-actor", args.gpus_per_actor)):
            if value is not None:
                raise BatchSpecError(f"{flag} needs --executor ray")
        return LocalExecutor(engine)
    from .batch_ray import RayExecutor, import_ray

    import_ray()  # fail now, with the install hint, rather than after planning
    return RayExecutor(args.address, args.actors, cpus_per_actor=args.cpus_per_actor,
                       gpus_per_actor=args.gpus_per_actor)


def cmd_batch(args: argparse.Namespace, engine: Engine | None = None) -> int:
    """Run ``reelgraph batch``; ``engine`` (optional) is reused by the local executor. Returns the exit code."""
    out = Path(args.out) if args.out else DEFAULT_OUT_DIR / f"{Path(args.workflow).stem}-batch"
    try:
        runs = plan_batch(args.workflow, out, sets=args.sets, params_file=args.params, grid=args.grid)
    except WorkflowInvalid as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_INVALID
    except BatchSpecError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    if args.dry_run:
        for run in runs:
            sys.stdout.write(json.dumps({"run_id": run.run_id, "params": run.params, "out_dir": run.out_dir},
                                        default=str) + "\n")
        return EXIT_OK
    sinks, events_stream = jsonl_sinks(args.events, args.events_file)
    progress = None if args.quiet else BatchProgress(sys.stderr)
    if progress is not None:
        sinks.append(progress)
    report = sys.stderr if args.events == "jsonl" and not args.events_file else sys.stdout
    job = BatchJob(
        workflow=str(Path(args.workflow).resolve()),
        outputs=tuple(args.output) if args.output else None,
        allow_paths=tuple(str(Path(p).resolve()) for p in args.allow_paths),
        engine=EngineSettings(tuple(args.plugin), args.cache_dir and str(Path(args.cache_dir).resolve())),
        # node events travel from the workers only when someone reads them: the event stream, or a live bar
        detail_events=bool(args.events or args.events_file or (progress is not None and progress.tty)),
    )
    executor: BatchExecutor | None = None
    try:
        executor = _executor(args, engine)
        result = run_batch(job, runs, out, executor, events=sinks, force=args.force)
    except (BatchError, BatchSpecError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted; finished runs are kept in {out / MANIFEST_NAME}: run the same batch again "
                         "to resume\n")
        return EXIT_INTERRUPTED
    finally:
        if executor is not None:
            executor.close()
        if events_stream is not None:
            events_stream.close()
    _summary(result, report)
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_FAILED if result.failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reelgraph.batch_cli batch ...``: the same as ``reelgraph batch ...``."""
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
