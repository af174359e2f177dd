"""The server's durable job queue: one SQLite database (WAL, fsync on commit) in the state folder.

A job accepted with ``201`` is a committed row, so it survives ``kill -9`` and power loss. Workers claim jobs in
an ``IMMEDIATE`` transaction (one writer at a time), so two workers never take the same job; each claim carries
a fresh token, and completion is recorded only by the holder of the current claim, in one transaction with its
outcome, so no job is recorded as finished twice. After a crash, :meth:`JobStore.recover` puts the jobs that
were running back in the queue (they re-run from the shared disk cache).

Every status change is also appended to ``transitions`` (job, status, attempt, time): the audit trail that the
exactly-once tests count. This module knows nothing about HTTP or the engine.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The statuses a job goes through; the last three are final.
STATUSES = ("queued", "running", "finished", "failed", "cancelled")
FINAL = frozenset({"finished", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    name TEXT,
    workflow TEXT NOT NULL,
    params TEXT NOT NULL,
    outputs TEXT,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claim TEXT,
    worker TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS transitions (
    job TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_job ON transitions (job);
"""


class StoreFull(Exception):
    """The database could not be written (disk full, file size limit, read-only): nothing was recorded."""


@dataclass
class JobRow:
    """One job as stored: what was submitted, where it stands, and how it ended."""

    seq: int
    id: str
    status: str
    name: str | None
    workflow: dict[str, Any]
    params: dict[str, Any]
    outputs: list[str] | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    worker: str | None
    cancel_requested: bool
    completions: int
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    claim: str | None = None


def _row(r: sqlite3.Row) -> JobRow:
    return JobRow(
        seq=r["seq"], id=r["id"], status=r["status"], name=r["name"], workflow=json.loads(r["workflow"]),
        params=json.loads(r["params"]), outputs=json.loads(r["outputs"]) if r["outputs"] else None,
        submitted_at=r["submitted_at"], started_at=r["started_at"], finished_at=r["finished_at"],
        attempts=r["attempts"], worker=r["worker"], cancel_requested=bool(r["cancel_requested"]),
        completions=r["completions"], result=json.loads(r["result"]) if r["result"] else {},
        error=json.loads(r["error"]) if r["error"] else None, claim=r["claim"],
    )


def _full(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and any(
        w in text for w in ("full", "disk i/o", "readonly", "read-only", "unable to open"))


class JobStore:
    """The job table in ``<state-dir>/jobs.sqlite3``; safe to use from many threads (one connection each)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        # One writer at a time, queued here rather than in SQLite's busy handler (which backs off in growing sleeps
        # and lets a writer starve for a second under 20 concurrent submissions). One server per state folder
        # (its lock file), so this lock covers every writer.
        self._write_lock = threading.Lock()
        try:
            self._db().executescript(_SCHEMA)
        except sqlite3.Error as exc:
            if _full(exc):
                raise StoreFull(str(exc)) from exc
            raise

    # -- connections and transactions ---------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the caller hears of it
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``); rolled back whole on any error."""
        db = self._db()
        with self._write_lock:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if _full(exc):
                    raise StoreFull(str(exc)) from exc
                raise
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error) and _full(exc):
                    raise StoreFull(str(exc)) from exc
                raise

    @staticmethod
    def _transition(db: sqlite3.Connection, job: str, status: str, attempt: int) -> None:
        db.execute("INSERT INTO transitions (job, status, attempt, at) VALUES (?, ?, ?, ?)",
                   (job, status, attempt, time.time()))

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- submitting and reading ---------------------------------------------------------------------------

    def add(self, job_id: str, workflow: dict[str, Any], params: dict[str, Any], outputs: Sequence[str] | None,
            name: str | None = None) -> JobRow:
        """Queue a job; once this returns, the job is on disk. Raises :class:`StoreFull` when it cannot be."""
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, status, name, workflow, params, outputs, submitted_at) VALUES (?,?,?,?,?,?,?)",
                (job_id, "queued", name, json.dumps(workflow), json.dumps(params),
                 json.dumps(list(outputs)) if outputs is not None else None, time.time()))
            self._transition(db, job_id, "queued", 0)
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> JobRow | None:
        """The job with this id, or None."""
        r = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(r) if r is not None else None

    def page(self, limit: int = 50, before: int | None = None, status: str | None = None) -> list[JobRow]:
        """Up to ``limit`` jobs, newest first, older than sequence number ``before`` (for the next page)."""
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if before is not None:
            sql += " AND seq < ?"
            args.append(before)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [_row(r) for r in self._db().execute(sql, args)]

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        rows = self._db().execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {s: 0 for s in STATUSES} | {r["status"]: r["n"] for r in rows}

    def transitions(self, job_id: str | None = None) -> list[tuple[str, str, int]]:
        """The audit trail: ``(job, status, attempt)`` in the order they happened."""
        sql = "SELECT job, status, attempt FROM transitions"
        rows = self._db().execute(sql + " WHERE job = ? ORDER BY rowid" if job_id else sql + " ORDER BY rowid",
                                  (job_id,) if job_id else ())
        return [(r["job"], r["status"], r["attempt"]) for r in rows]

    def ids(self) -> set[str]:
        """Every job id in the store."""
        return {r["id"] for r in self._db().execute("SELECT id FROM jobs")}

    # -- workers ------------------------------------------------------------------------------------------

    def claim(self, worker: str) -> JobRow | None:
        """Take the oldest queued job for ``worker`` (it becomes ``running`` with a new claim token), or None."""
        with self._write() as db:
            r = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if r is None:
                return None
            token = uuid.uuid4().hex
            db.execute("UPDATE jobs SET status = 'running', claim = ?, worker = ?, attempts = attempts + 1, "
                       "started_at = ? WHERE id = ? AND status = 'queued'", (token, worker, time.time(), r["id"]))
            attempt = db.execute("SELECT attempts FROM jobs WHERE id = ?", (r["id"],)).fetchone()["attempts"]
            self._transition(db, r["id"], "running", attempt)
        return self.get(r["id"])

    def complete(self, job_id: str, claim: str, status: str, result: dict[str, Any],
                 error: dict[str, Any] | None) -> bool:
        """Record how a claimed run ended (``finished``, ``failed`` or ``cancelled``), atomically.

        Returns False (and changes nothing) unless ``claim`` is the job's current claim and it is running, so a
        stale worker can never finish a job a second time. Raises :class:`StoreFull` when it cannot write.
        """
        if status not in FINAL:
            raise ValueError(f"not a final status: {status!r}")
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ?, claim = NULL, "
                "completions = completions + 1 WHERE id = ? AND status = 'running' AND claim = ?",
                (status, json.dumps(result, default=str), json.dumps(error, default=str) if error else None,
                 time.time(), job_id, claim))
            if cur.rowcount != 1:
                return False
            attempt = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()["attempts"]
            self._transition(db, job_id, status, attempt)
        return True

    def release(self, job_id: str, claim: str) -> bool:
        """Put a claimed job back in the queue (the server is stopping mid-run); it runs again later."""
        with self._write() as db:
            cur = db.execute("UPDATE jobs SET status = 'queued', claim = NULL, worker = NULL "
                             "WHERE id = ? AND status = 'running' AND claim = ?", (job_id, claim))
            if cur.rowcount == 1:
                self._transition(db, job_id, "queued", 0)
            return cur.rowcount == 1

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: a queued one becomes ``cancelled`` at once; a running one is marked to be interrupted.

        Returns what happened: ``"removed"`` (it was queued), ``"interrupting"`` (it is running), the final status
        it already had, or None when there is no such job.
        """
        with self._write() as db:
            r = db.execute("SELECT status, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if r is None:
                return None
            if r["status"] == "queued":
                db.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, claim = NULL WHERE id = ?",
                           (time.time(), job_id))
                self._transition(db, job_id, "cancelled", r["attempts"])
                return "removed"
            if r["status"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                return "interrupting"
            return str(r["status"])

    def recover(self) -> list[str]:
        """After a crash: jobs left ``running`` go back to the queue (or end ``cancelled`` if that was asked).

        Call once at start-up, while holding the state folder's lock, before any worker runs. Returns the ids
        put back in the queue.
        """
        with self._write() as db:
            rows = db.execute("SELECT id, attempts, cancel_requested FROM jobs WHERE status = 'running'").fetchall()
            requeued = []
            for r in rows:
                if r["cancel_requested"]:
                    db.execute("UPDATE jobs SET status = 'cancelled', claim = NULL, finished_at = ? WHERE id = ?",
                               (time.time(), r["id"]))
                    self._transition(db, r["id"], "cancelled", r["attempts"])
                else:
                    db.execute("UPDATE jobs SET status = 'queued', claim = NULL, worker = NULL WHERE id = ?",
                               (r["id"],))
                    self._transition(db, r["id"], "queued", r["attempts"])
                    requeued.append(r["id"])
        return requeued
