"""``reelgraph serve``: a durable job queue over HTTP, with a live web page.

The pieces, one module each:

* :mod:`reelgraph.server_store`: the SQLite queue (accepted jobs survive ``kill -9``; exactly-once completion);
* :mod:`reelgraph.server_workers`: worker threads, one long-lived engine each;
* :mod:`reelgraph.server_events`: each job's engine events, on disk and live;
* :mod:`reelgraph.server_http`: token, body limit and body timeout, checked before any route;
* :mod:`reelgraph.server_models` and :mod:`reelgraph.server_routes`: the API contract and its routes.

This module holds the configuration, opens the state folder (taking its lock, recovering after a crash) and
runs uvicorn. Only ``reelgraph serve`` imports it, so the rest of the command line never loads the web stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import re
import secrets
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from . import __version__
from .api import Engine
from .server_events import EventHub
from .server_http import ApiError, Guard, error_body
from .server_routes import JOB_ID, api, page, problems_response
from .server_store import JobStore
from .server_workers import RunSettings, WorkerPool

log = logging.getLogger("reelgraph.server")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8188
DEFAULT_MAX_BODY = 16 * 1024 * 1024


class ServeError(Exception):
    """The server cannot start as asked (a usage error: exit code 2)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``reelgraph serve`` was told (see ``docs/server.md`` for each option)."""

    state_dir: Path
    token: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    plugins: tuple[str, ...] = ()
    allow_paths: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    body_timeout: float = 30.0
    cache_size: int | None = None
    keepalive: float = 15.0
    entry_points: bool = True


def resolve_token(host: str, given: str | None, state_dir: Path) -> tuple[str, bool]:
    """The token to require, and whether it was generated here.

    ``--token`` or ``REELGRAPH_TOKEN`` wins. Without one, a loopback server makes a random token (written to
    ``<state-dir>/token``, mode 0600, and printed once); a server on any other address refuses to start.
    """
    token = given if given is not None else os.environ.get("REELGRAPH_TOKEN")
    if token is not None:
        if not token.strip() or re.search(r"\s", token):
            raise ServeError("the token must be non-empty and without spaces")
        return token, False
    if not is_loopback(host):
        raise ServeError(f"refusing to listen on {host} without a token: give --token or set REELGRAPH_TOKEN")
    token = secrets.token_urlsafe(24)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "token"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


@dataclass
class ServerState:
    """An opened state folder: its lock, the queue, the event files, the workers and the validating engine."""

    config: ServerConfig
    store: JobStore
    events: EventHub
    pool: WorkerPool
    validator: Engine
    lock: IO[str]
    recovered: list[str] = field(default_factory=list)

    @property
    def jobs_dir(self) -> Path:
        """Where each job's folder lives."""
        return self.config.state_dir / "jobs"

    @classmethod
    def open(cls, config: ServerConfig) -> ServerState:
        """Take the state folder (one server at a time), put crashed runs back in the queue, set up workers.

        Workers start with :meth:`start` (the app's start-up does it).
        """
        root = config.state_dir
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / "server.lock", "a+", encoding="utf-8")  # noqa: SIM115 (held for the server's life)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ServeError(f"another reelgraph server is using {root}") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        store = JobStore(root / "jobs.sqlite3")
        recovered = store.recover()
        (root / "jobs").mkdir(exist_ok=True)
        _sweep_orphans(root / "jobs", store.ids())
        events = EventHub(root / "events")
        settings = RunSettings(config.plugins, str(root / "cache"), config.cache_size, config.allow_paths,
                               config.entry_points)
        pool = WorkerPool(store, events, root / "jobs", settings, config.workers)
        validator = Engine(config.plugins, entry_points=config.entry_points)
        for info in validator.plugins:
            if info.error:
                log.warning("plugin %s was skipped: %s", info.name, info.error)
        return cls(config, store, events, pool, validator, lock, recovered)

    def start(self) -> None:
        """Start the workers."""
        self.pool.start()

    def close(self) -> None:
        """Stop the workers (running jobs go back to the queue), close files, release the lock."""
        self.pool.stop()
        self.events.close()
        self.store.close()
        with contextlib.suppress(OSError):
            fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()


def _sweep_orphans(jobs_dir: Path, known: set[str]) -> None:
    """Remove job folders with no job: a submission that died between making its folder and committing."""
    for entry in os.scandir(jobs_dir):
        if entry.is_dir(follow_symlinks=False) and JOB_ID.match(entry.name) and entry.name not in known:
            shutil.rmtree(entry.path, ignore_errors=True)


def create_app(state: ServerState) -> FastAPI:
    """The ASGI app over an opened state folder; its start-up starts the workers, its shutdown stops them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="reelgraph", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, description="A durable job queue for reelgraph workflows (docs/server.md).")
    app.state.rg = state
    app.include_router(api)
    app.include_router(page)
    _install_error_handlers(app)
    app.add_middleware(Guard, token=state.config.token, max_body=state.config.max_body,  # type: ignore[arg-type]
                       body_timeout=state.config.body_timeout)
    app.openapi_schema = None
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = original()
            doc.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            doc["security"] = [{"bearer": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(error_body(code, str(exc.detail), where=f"{request.method} {request.url.path}"),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problems_response([{"loc": e.get("loc", ()), "msg": e.get("msg", "invalid")} for e in exc.errors()])

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", f"{type(exc).__name__}: {exc}",
                                       where=f"{request.method} {request.url.path}"), status_code=500)


def serve(config: ServerConfig, *, token_generated: bool = False, log_level: str = "info") -> int:
    """Open the state folder and run the server until SIGINT/SIGTERM; returns the exit code."""
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = ServerState.open(config)
    if state.recovered:
        log.info("put %d job(s) that were running back in the queue", len(state.recovered))
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{config.port}/"
    if token_generated:
        sys.stderr.write(f"reelgraph serve: open {url}#token={config.token}\n"
                         f"(a new token, also in {config.state_dir / 'token'}; set REELGRAPH_TOKEN to choose one)\n")
    else:
        sys.stderr.write(f"reelgraph serve: open {url} and give the token\n")
    sys.stderr.flush()
    uvicorn.run(create_app(state), host=config.host, port=config.port, log_level=log_level,
                timeout_keep_alive=5, limit_concurrency=512, server_header=False, lifespan="on")
    return 0
