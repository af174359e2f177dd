"""Fixtures for the server tests: an in-process app (real SQLite, real worker threads, Starlette's test client)
and a real ``reelgraph serve`` (uvicorn) in a subprocess on a free loopback port, for kill -9 and socket tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ROOT, TEST_PLUGIN

SERVER_PLUGIN = str(Path(__file__).parent / "server_nodes.py")
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HELLO = json.loads((ROOT / "workflows" / "hello.json").read_text(encoding="utf-8"))
FINAL = {"finished", "failed", "cancelled"}


def slow_workflow(steps: int = 20, delay: float = 0.05, tag: str = "x") -> dict[str, Any]:
    """``first`` (quick) -> ``slow`` (``steps`` progress ticks) -> ``mark`` (records that the run completed)."""
    return {"reelgraph": 1, "name": "slow", "params": {"tag": {"type": "str", "default": tag}},
            "nodes": {"first": {"type": "t.add", "inputs": {"a": steps, "b": 0}},
                      "slow": {"type": "s.tick", "inputs": {"n": {"from": "first.result"}, "delay": delay,
                                                             "salt": {"param": "tag"}}},
                      "mark": {"type": "s.mark",
                               "inputs": {"tag": {"param": "tag"}, "after": {"from": "slow.result"}}}}}


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, every: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_final(client: Any, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll a job until it ends; return its JSON."""
    def done() -> dict[str, Any] | None:
        job = client.get(f"/api/jobs/{job_id}").json()
        return job if job["status"] in FINAL else None

    return wait_for(done, timeout, what=f"job {job_id} to end")  # type: ignore[no-any-return]


@pytest.fixture
def make_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Build an in-process server over a fresh state folder and return a test client sending the token."""
    from fastapi.testclient import TestClient

    from reelgraph.server import ServerConfig, ServerState, create_app

    monkeypatch.delenv("REELGRAPH_PLUGINS", raising=False)
    monkeypatch.setenv("REELGRAPH_MARK_LOG", str(tmp_path / "marks.log"))
    opened: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        kwargs.setdefault("plugins", (TEST_PLUGIN, SERVER_PLUGIN))
        kwargs.setdefault("entry_points", False)
        config = ServerConfig(kwargs.pop("state_dir", tmp_path / "state"), kwargs.pop("token", TOKEN), **kwargs)
        client = TestClient(create_app(ServerState.open(config)), headers=AUTH)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., Any]) -> Any:
    """An in-process server with one worker."""
    return make_client()


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``python -m reelgraph serve`` in a subprocess on loopback; started, killed and restarted by the test."""

    def __init__(self, state_dir: Path, *args: str, env: dict[str, str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.state_dir = state_dir
        self.args = args
        self.env = {**os.environ, "REELGRAPH_TOKEN": TOKEN, **(env or {})}
        self.env.pop("REELGRAPH_PLUGINS", None)
        self.preexec = preexec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 60.0, preexec: Callable[[], None] | None = None) -> LiveServer:
        """Start the server and wait until ``/api/health`` answers with every worker ready."""
        cmd = [sys.executable, "-m", "reelgraph", "serve", "--port", str(self.port), "--state-dir",
               str(self.state_dir), "--plugin", TEST_PLUGIN, "--plugin", SERVER_PLUGIN, "--log-level", "warning",
               *self.args]
        log = open(self.log, "ab")  # noqa: SIM115 (the child holds it)
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.state_dir.parent,
                                     preexec_fn=preexec or self.preexec)
        log.close()
        client = self.client()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                health = client.get("/api/health")
            except httpx.TransportError:
                return False
            return health.status_code == 200 and health.json()["workers_ready"] == health.json()["workers"]

        wait_for(ready, timeout, every=0.1, what="the server to start")
        return self

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client for this server that sends the token."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, headers=AUTH, **kwargs)

    def kill9(self) -> None:
        """``kill -9`` the server: no shutdown code runs."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM (uvicorn's graceful stop); returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Make (unstarted) live servers over folders in ``tmp_path``; all are stopped at the end."""
    servers: list[LiveServer] = []
    marks = tmp_path / "marks.log"

    def factory(*args: str, state: str = "state", **kwargs: Any) -> LiveServer:
        kwargs.setdefault("env", {})
        kwargs["env"].setdefault("REELGRAPH_MARK_LOG", str(marks))
        server = LiveServer(tmp_path / state, *args, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()
