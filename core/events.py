"""Run events and the sinks that show them: a terminal progress display and a JSON-lines stream.

Event kinds: ``run_started``, ``node_started``, ``node_cached``, ``node_progress`` (i/n), ``node_stage``
(``message``: what a node is doing before it can count steps, e.g. importing torch; may come before
``run_started``, while cache keys are computed),
``node_finished`` (seconds), ``node_failed`` (message), ``cache_warning`` (a damaged disk cache entry was
ignored and removed, or a result could not be written to the disk cache: ``reason`` is ``corrupt`` or
``write_failed``; the run goes on), ``run_finished`` (status, seconds).
A sink is any callable taking an :class:`Event`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

EVENT_KINDS = (
    "run_started",
    "node_started",
    "node_cached",
    "node_progress",
    "node_stage",
    "node_finished",
    "node_failed",
    "cache_warning",
    "run_finished",
)


@dataclass
class Event:
    """One thing that happened during a run."""

    event: str
    run_id: str
    node: str | None = None
    node_type: str | None = None
    i: int | None = None
    n: int | None = None
    seconds: float | None = None
    message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON object, without empty fields."""
        out = {k: v for k, v in self.__dict__.items() if v is not None and k != "extra"}
        if self.extra:
            out.update(self.extra)
        return out


Sink = Callable[[Event], None]


class JsonLinesSink:
    """Writes each event as one JSON object per line (for machines: CI logs, dashboards)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> None:
        self.stream.write(json.dumps(event.to_dict(), default=str) + "\n")
        self.stream.flush()


class TerminalProgress:
    """A human progress display on a terminal: overall node count and one bar for a long node.

    On a TTY the bar redraws in place; otherwise only one line per finished node is printed. A node's stages
    (``node_stage``: importing libraries, reading weights) get a line each, so a long load is never silent.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.total = 0
        self.done = 0
        self._bar_open = False

    def _line(self, text: str) -> None:
        if self._bar_open:
            self.stream.write("\r\033[K")
            self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, ev: Event) -> None:
        if ev.event == "run_started":
            self.total = int(ev.extra.get("nodes", 0))
            self.done = 0
        elif ev.event in ("node_finished", "node_cached"):
            self.done += 1
            how = "cached" if ev.event == "node_cached" else f"{ev.seconds:.2f}s"
            self._line(f"[{self.done}/{self.total}] {ev.node} ({ev.node_type}) {how}")
        elif ev.event == "node_progress" and self.tty and ev.n:
            filled = int(self.width * (ev.i or 0) / ev.n)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r\033[K[{self.done + 1}/{self.total}] {ev.node} |{bar}| {ev.i}/{ev.n}")
            self.stream.flush()
            self._bar_open = True
        elif ev.event == "node_stage":
            where = f"[{self.done + 1}/{self.total}] " if self.total else ""
            self._line(f"{where}{ev.node} ({ev.node_type}): {ev.message}...")
        elif ev.event == "cache_warning":
            self._line(f"warning: {ev.node}: {ev.message}")
        elif ev.event == "node_failed":
            self._line(f"[{self.done + 1}/{self.total}] {ev.node} ({ev.node_type}) FAILED: {ev.message}")
        elif ev.event == "run_finished":
            self._line(f"run {ev.extra.get('status', '?')} in {ev.seconds:.2f}s "
                       f"({ev.extra.get('ran', 0)} ran, {ev.extra.get('cached', 0)} cached)")


def jsonl_sinks(events: str | None, events_file: str | None) -> tuple[list[Sink], TextIO | None]:
    """The JSON-lines sink the command line asked for (``--events jsonl`` / ``--events-file F``).

    Returns the sinks and the file it opened (the caller closes it), or no sink when neither was given.
    """
    if events_file:
        stream = open(events_file, "w", encoding="utf-8")  # noqa: SIM115
        return [JsonLinesSink(stream)], stream
    if events == "jsonl":
        return [JsonLinesSink(sys.stdout)], None
    return [], None
