"""Each job's engine events: kept in ``<state-dir>/events/<id>.jsonl`` and pushed live to server-sent-event readers.

Workers publish from their threads; readers are asyncio tasks of the HTTP server. Line *n* of a job's file is
event number *n* (its SSE ``id``), so a reader that reconnects with ``Last-Event-ID`` misses nothing, and a job
that finished long ago (or before a restart) replays the same stream. The last line, ``{"_end": status}``,
marks the end of the job. A reader that cannot keep up (its queue fills) is dropped, never the worker slowed:
it reconnects and replays from the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("reelgraph.server")

#: Key of the line that ends a job's event file (its value is the job's final status).
END_KEY = "_end"


@dataclass
class Subscription:
    """One live reader of one job's events: a bounded queue filled from worker threads."""

    job_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[int, dict[str, Any]]]
    overflowed: bool = False

    def offer(self, item: tuple[int, dict[str, Any]]) -> None:
        """Called in the reader's event loop: queue the item, or mark the reader as too slow."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True


@dataclass
class _JobLog:
    count: int
    stream: TextIO | None = None
    readers: list[Subscription] = field(default_factory=list)


class EventHub:
    """Append-only event files per job, with live fan-out to subscribers (thread-safe)."""

    def __init__(self, folder: str | Path, reader_queue: int = 2000) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.reader_queue = reader_queue
        self._lock = threading.Lock()
        self._jobs: dict[str, _JobLog] = {}
        self._write_failed: set[str] = set()

    def path(self, job_id: str) -> Path:
        """The job's event file (job ids are hex, made by the server)."""
        return self.folder / f"{job_id}.jsonl"

    def _log(self, job_id: str) -> _JobLog:
        entry = self._jobs.get(job_id)
        if entry is None:
            entry = self._jobs[job_id] = _JobLog(sum(1 for _ in self._lines(job_id)))
        return entry

    def _lines(self, job_id: str) -> Iterator[dict[str, Any]]:
        try:
            with open(self.path(job_id), encoding="utf-8") as f:
                for line in f:
                    if line.endswith("\n"):
                        yield json.loads(line)
        except FileNotFoundError:
            return

    def publish(self, job_id: str, data: dict[str, Any]) -> None:
        """Append one event (an ``Event.to_dict()``) to the job's file and hand it to every live reader."""
        line = json.dumps(data, default=str)
        with self._lock:
            entry = self._log(job_id)
            entry.count += 1
            try:
                if entry.stream is None:
                    entry.stream = open(self.path(job_id), "a", encoding="utf-8")  # noqa: SIM115
                entry.stream.write(line + "\n")
                entry.stream.flush()
            except OSError as exc:  # disk full: readers connected now still get it; a replay will not
                if job_id not in self._write_failed:
                    self._write_failed.add(job_id)
                    log.warning("events of job %s are not kept on disk: %s", job_id, exc)
            for reader in list(entry.readers):
                with contextlib.suppress(RuntimeError):  # the reader's loop has closed
                    reader.loop.call_soon_threadsafe(reader.offer, (entry.count, data))

    def end(self, job_id: str, status: str) -> None:
        """Mark the job's stream as complete (the job reached ``status``) and close its file."""
        self.publish(job_id, {END_KEY: status})
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is not None:
                if entry.stream is not None:
                    with contextlib.suppress(OSError):
                        entry.stream.close()
                    entry.stream = None
                if not entry.readers:
                    del self._jobs[job_id]

    def subscribe(self, job_id: str) -> Subscription:
        """Start receiving the job's new events (call from the reader's event loop); then :meth:`replay`."""
        sub = Subscription(job_id, asyncio.get_running_loop(), asyncio.Queue(self.reader_queue))
        with self._lock:
            self._log(job_id).readers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop a reader (its connection closed)."""
        with self._lock:
            entry = self._jobs.get(sub.job_id)
            if entry is not None:
                with contextlib.suppress(ValueError):
                    entry.readers.remove(sub)
                if not entry.readers and entry.stream is None:
                    del self._jobs[sub.job_id]

    def replay(self, job_id: str) -> list[tuple[int, dict[str, Any]]]:
        """Every event already in the job's file, numbered from 1."""
        return list(enumerate(self._lines(job_id), 1))

    def close(self) -> None:
        """Close every open event file."""
        with self._lock:
            for entry in self._jobs.values():
                if entry.stream is not None:
                    with contextlib.suppress(OSError):
                        entry.stream.close()
                    entry.stream = None


def sse_frame(seq: int, data: dict[str, Any]) -> str:
    """One server-sent event: an engine event as ``data`` (``id`` is its number), or the ``end`` event."""
    if END_KEY in data:
        return f"id: {seq}\nevent: end\ndata: {json.dumps({'status': data[END_KEY]})}\n\n"
    return f"id: {seq}\ndata: {json.dumps(data, default=str)}\n\n"
