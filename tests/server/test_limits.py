"""Refusals at the socket, against the real server: huge bodies, slow clients, raw request paths.

Every request goes to a server on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import AUTH, HELLO, TOKEN, LiveServer, slow_workflow, wait_for

MAX_BODY = 1024 * 1024
GIB = 1024**3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("limits") / "state", "--max-body", "1M", "--body-timeout", "1",
                      env={"REELGRAPH_MARK_LOG": ""})
    live.start()
    yield live
    live.stop()


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    return sock


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of one HTTP/1.1 response read from the socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, json.loads(body) if body else None


def request_head(path: str, extra: str = "", method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def test_a_gigabyte_body_is_refused_with_413_before_it_is_read(server: LiveServer) -> None:
    sock = connect(server)
    sock.sendall(request_head("/api/jobs", f"Content-Length: {GIB}\r\n"))
    sent = 0
    sock.settimeout(0.05)
    answered = False
    started = time.monotonic()
    while sent < 64 * MAX_BODY and time.monotonic() - started < 20:
        try:
            sock.sendall(b"x" * 65536)
            sent += 65536
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            answered = True
            break
        try:
            if sock.recv(1, socket.MSG_PEEK):
                answered = True
                break
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            answered = True
            break
    assert answered, "the server kept reading"
    status, headers, body = read_response(sock)
    assert status == 413
    assert body["error"]["code"] == "body_too_large" and body["error"]["limit"] == MAX_BODY
    assert body["error"]["where"] == "header Content-Length"
    assert headers["connection"] == "close"
    assert sent < 16 * MAX_BODY, f"{sent} bytes went out before the refusal"
    sock.close()


def test_a_chunked_body_is_cut_off_at_the_limit(server: LiveServer) -> None:
    sock = connect(server)
    sock.sendall(request_head("/api/jobs", "Transfer-Encoding: chunked\r\n"))
    chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"
    sent = 0
    try:
        for _ in range(GIB // 65536):
            sock.sendall(chunk)
            sent += 65536
            if sent > 8 * MAX_BODY:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, _, body = read_response(sock)
    assert status == 413 and body["error"]["code"] == "body_too_large" and body["error"]["where"] == "body"
    assert sent <= 8 * MAX_BODY + 65536
    sock.close()


def test_without_the_token_even_the_body_limit_is_never_reached(server: LiveServer) -> None:
    sock = connect(server)
    sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    status, _, body = read_response(sock)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    sock.close()


def test_a_client_that_stops_sending_its_body_gets_408(server: LiveServer) -> None:
    sock = connect(server)
    sock.sendall(request_head("/api/jobs", "Content-Length: 100\r\n") + b'{"workflow": ')
    started = time.monotonic()
    status, _, body = read_response(sock, timeout=10)
    assert status == 408 and body["error"]["code"] == "body_timeout"
    assert 0.9 <= time.monotonic() - started < 5
    sock.close()


def test_slow_clients_do_not_hold_up_the_others(server: LiveServer) -> None:
    # five clients trickle their request headers a byte at a time
    slow = [connect(server) for _ in range(5)]
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        for byte in b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"y" * 200:
            if stop.wait(0.05):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    threads = [threading.Thread(target=trickle, args=(s,)) for s in slow]
    for t in threads:
        t.start()
    # a reader that never reads its event stream while a job sends it hundreds of events
    reader = connect(server)
    with server.client() as client:
        job = client.post("/api/jobs", json={"workflow": slow_workflow(steps=300, delay=0.0, tag="flood")}).json()
        reader.sendall(request_head(f"/api/jobs/{job['id']}/events", method="GET"))
        latencies = []
        for i in range(30):
            t0 = time.perf_counter()
            assert client.get("/api/health").status_code == 200
            r = client.post("/api/jobs", json={"workflow": HELLO, "params": {"seed": 5000 + i}})
            assert r.status_code == 201
            latencies.append(time.perf_counter() - t0)
        assert max(latencies) < 2.0, latencies
        flood = wait_for(lambda: client.get(f"/api/jobs/{job['id']}").json()["status"] == "finished", 30,
                         what="the flooding job to finish although nobody reads its events")
        assert flood
    stop.set()
    for t in threads:
        t.join(5)
    for s in [*slow, reader]:
        s.close()


@pytest.mark.parametrize("raw", ["../jobs.sqlite3", "../../jobs.sqlite3", "sub/../../token", "./out.txt",
                                 "sub/../out.txt", "%2e%2e/jobs.sqlite3", "..%5cjobs.sqlite3", "/etc/passwd",
                                 "//etc/passwd", "out.txt/", "out.txt/."])
def test_raw_dot_segments_on_the_files_route_are_404(server: LiveServer, raw: str) -> None:
    with server.client() as client:
        wf = {"reelgraph": 1, "nodes": {"a": {"type": "t.save_text", "inputs": {"text": "ok", "path": "out.txt"}}}}
        job_id = client.post("/api/jobs", json={"workflow": wf}).json()["id"]
        wait_for(lambda: client.get(f"/api/jobs/{job_id}").json()["status"] == "finished", 20)
        assert client.get(f"/api/jobs/{job_id}/files/out.txt").content == b"ok"
    sock = connect(server)
    sock.sendall(request_head(f"/api/jobs/{job_id}/files/{raw}", method="GET"))
    status, _, body = read_response(sock)
    assert status == 404 and body["error"]["code"] == "not_found", (raw, body)
    sock.close()


def test_every_refusal_is_a_json_error(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        cases = [
            client.get("/api/jobs"),
            client.post("/api/jobs", headers=AUTH, content=b"{oops"),
            client.post("/api/jobs", headers=AUTH, json={"workflow": {"reelgraph": 1, "nodes": []}}),
            client.delete("/api/jobs", headers=AUTH),
            client.get("/api/jobs/zzz", headers=AUTH),
            client.get("/static/nope.js"),
            client.post(f"/api/jobs/{'0' * 16}/cancel", headers=AUTH),
        ]
    for r in cases:
        assert r.headers["content-type"].startswith("application/json"), r.request.url
        body = r.json()
        assert "problems" in body or set(body["error"]) >= {"code", "message"}, body
    assert [r.status_code for r in cases] == [401, 400, 422, 405, 404, 404, 404]
