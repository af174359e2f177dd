"""The HTTP routes of ``reelgraph serve``: the job API under ``/api`` and the web page at ``/``.

Handlers that touch SQLite or the disk are plain functions (FastAPI runs them in its thread pool); only the event
stream is asynchronous. Job ids are 16 hex digits made by the server; a file is served only if its name is one
the listing of the job's folder gives, never by joining the request's text into a path.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from . import __version__
from .docs import node_type_summary
from .files import atomic_write_text
from .schema import workflow_schema
from .server_events import END_KEY, sse_frame
from .server_http import ApiError, error_body
from .server_models import CancelOut, Created, ErrorOut, Health, Job, JobError, JobPage, JobRequest, Problems, Timings
from .server_store import FINAL, JobRow, StoreFull
from .server_workers import WORKFLOW_NAME

if TYPE_CHECKING:
    from .server import ServerState

JOB_ID = re.compile(r"^[0-9a-f]{16}$")
#: Most files listed for one job, and how deep its folders are walked.
MAX_FILES, MAX_DEPTH = 10_000, 8

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut, "description": "no or wrong token"}}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "no such job or file"}}

api = APIRouter(prefix="/api", responses=_ERRORS)
page = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.rg  # type: ignore[no-any-return]


def _job(request: Request, job_id: str) -> JobRow:
    row = _state(request).store.get(job_id) if JOB_ID.match(job_id) else None
    if row is None:
        raise ApiError("not_found", f"no job {job_id!r}", where="path id")
    return row


def job_files(folder: Path) -> dict[str, Path]:
    """The files in a job's folder by their name there (``a/b.png``): regular files only, links never followed,
    hidden names (temporaries) and the submitted ``workflow.json`` left out."""
    found: dict[str, Path] = {}

    def walk(path: Path, prefix: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if len(found) >= MAX_FILES or entry.name.startswith("."):
                continue
            name = prefix + entry.name
            if entry.is_file(follow_symlinks=False):
                if name != WORKFLOW_NAME:
                    found[name] = Path(entry.path)
            elif entry.is_dir(follow_symlinks=False) and depth < MAX_DEPTH:
                walk(Path(entry.path), name + "/", depth + 1)

    walk(folder, "", 0)
    return found


def job_out(row: JobRow, jobs_dir: Path) -> Job:
    """The API's view of a stored job."""
    result = row.result or {}
    started = row.started_at
    return Job(
        id=row.id, status=row.status, name=row.name, params=row.params,  # type: ignore[arg-type]
        requested_outputs=row.outputs, outputs=result.get("outputs", {}),
        files=sorted(job_files(jobs_dir / row.id)) if row.status != "queued" else [],
        error=JobError(**row.error) if row.error else None,
        timings=Timings(submitted=row.submitted_at, started=started, finished=row.finished_at,
                        queued_seconds=round(started - row.submitted_at, 6) if started else None,
                        run_seconds=result.get("seconds"), nodes=result.get("nodes", {})),
        attempts=row.attempts, cancel_requested=row.cancel_requested,
    )


def _decode(body: bytes) -> Any:
    """Parse the request body, or raise ``bad_json`` with the line and column of the mistake."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(body.decode("utf-8"), parse_constant=refuse)
    except UnicodeDecodeError as exc:
        raise ApiError("bad_json", f"the body is not UTF-8 (byte {exc.start})", where="body", position=exc.start) \
            from None
    except json.JSONDecodeError as exc:
        raise ApiError("bad_json", f"invalid JSON: {exc.msg}", where="body", line=exc.lineno, column=exc.colno,
                       position=exc.pos) from None
    except ValueError as exc:
        raise ApiError("bad_json", f"invalid JSON: {exc}", where="body") from None
    except RecursionError:
        raise ApiError("bad_json", "invalid JSON: nested too deeply", where="body") from None


def problems_response(errors: list[dict[str, Any]]) -> JSONResponse:
    """422 for a request of the wrong shape: one ``bad_request`` problem per pydantic error, ``input`` its field."""
    problems = [{"code": "bad_request", "node": None, "input": ".".join(str(p) for p in e.get("loc", ())) or None,
                 "message": e.get("msg", "invalid")} for e in errors]
    return JSONResponse(Problems.model_validate({"problems": problems}).model_dump(), status_code=422)


# -- the job API ---------------------------------------------------------------------------------------------


@api.post("/jobs", status_code=201, response_model=Created, summary="Queue a workflow run",
          openapi_extra={"requestBody": {"required": True,
                                         "content": {"application/json": {"schema": JobRequest.model_json_schema()}}}},
          responses={422: {"model": Problems, "description": "invalid workflow: every problem; nothing queued"},
                     400: {"model": ErrorOut}, 413: {"model": ErrorOut}, 507: {"model": ErrorOut}})
async def submit(request: Request) -> Response:
    """Validate the workflow (every problem at once: 422) and queue it; a 201 means it is on disk."""
    from pydantic import ValidationError

    data = _decode(await request.body())
    try:
        job = JobRequest.model_validate(data)
    except ValidationError as exc:
        return problems_response([{"loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()])
    return await run_in_threadpool(_queue, _state(request), job)


def _queue(st: ServerState, job: JobRequest) -> Response:
    job_id = secrets.token_hex(8)
    folder = st.jobs_dir / job_id
    try:
        folder.mkdir(parents=True)
        atomic_write_text(folder / WORKFLOW_NAME, json.dumps(job.workflow, indent=2))
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise ApiError("storage_full", f"cannot write the job's folder: {exc.strerror or exc}", where="state-dir") \
            from None
    # A remote client's params are not the server user's intent: their paths stay sandboxed.
    problems = st.validator.validate(folder / WORKFLOW_NAME, job.params, job.outputs, out_dir=folder,
                                     allow_paths=st.config.allow_paths, trust_params=False)
    if problems:
        shutil.rmtree(folder, ignore_errors=True)
        return JSONResponse({"problems": [p.to_dict() for p in problems]}, status_code=422)
    name = job.workflow.get("name")
    try:
        st.store.add(job_id, job.workflow, job.params, job.outputs, name if isinstance(name, str) else None)
    except StoreFull as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise ApiError("storage_full", f"the job queue cannot be written: {exc}", where="state-dir") from None
    st.pool.wake()
    return JSONResponse(Created(id=job_id, status="queued").model_dump(), status_code=201,
                        headers={"Location": f"/api/jobs/{job_id}"})


@api.get("/jobs", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(request: Request, limit: int = Query(50, ge=1, le=500), before: int | None = Query(None, ge=1),
              status: str | None = Query(None, pattern="^(queued|running|finished|failed|cancelled)$")) -> JobPage:
    """A page of jobs, newest first. ``next`` is the ``before`` of the following page (null on the last)."""
    st = _state(request)
    rows = st.store.page(limit + 1, before, status)
    more = len(rows) > limit
    rows = rows[:limit]
    return JobPage(jobs=[job_out(r, st.jobs_dir) for r in rows], next=rows[-1].seq if more and rows else None)


@api.get("/jobs/{job_id}", response_model=Job, responses=_NOT_FOUND, summary="One job")
def get_job(request: Request, job_id: str) -> Job:
    """A job's status, outputs, files, error and timings."""
    return job_out(_job(request, job_id), _state(request).jobs_dir)


@api.post("/jobs/{job_id}/cancel", response_model=CancelOut, responses={
    **_NOT_FOUND, 202: {"model": CancelOut, "description": "running: interrupted at its next step"},
    409: {"model": ErrorOut, "description": "the job already ended"}}, summary="Cancel a job")
def cancel(request: Request, job_id: str) -> Response:
    """A queued job is removed from the queue (200); a running one stops at its next step, keeping finished
    nodes in the cache (202; it ends ``cancelled``); a job that already ended is a 409."""
    st = _state(request)
    row = _job(request, job_id)
    what = st.store.cancel(row.id)
    if what == "removed":
        st.events.end(row.id, "cancelled")
        return JSONResponse(CancelOut(id=row.id, result="removed", status="cancelled").model_dump())
    if what == "interrupting":
        st.pool.cancel(row.id)
        return JSONResponse(CancelOut(id=row.id, result="interrupting", status="running").model_dump(),
                            status_code=202)
    raise ApiError("not_cancellable", f"job {row.id} already ended ({what})", where="path id", status=what)


@api.get("/jobs/{job_id}/events", responses={**_NOT_FOUND, 200: {"content": {"text/event-stream": {}}}},
         response_class=StreamingResponse, summary="The job's engine events (server-sent events)")
async def job_events(request: Request, job_id: str,
                     last_event_id: str | None = Header(None, description="resume after this event id")) -> Response:
    """Every engine event of the job (``Event.to_dict()``, as ``--events jsonl`` prints it), past ones first,
    then live; each has an ``id``. The stream ends with ``event: end`` carrying the job's final status."""
    st = _state(request)
    row = await run_in_threadpool(_job, request, job_id)
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    sub = st.events.subscribe(row.id)

    async def stream() -> AsyncIterator[str]:
        last = start
        try:
            for seq, data in await run_in_threadpool(st.events.replay, row.id):
                if seq > last:
                    last = seq
                    yield sse_frame(seq, data)
                if END_KEY in data:
                    return
            while True:
                if sub.overflowed:  # too slow a reader: it reconnects with Last-Event-ID and replays the file
                    return
                try:
                    seq, data = await asyncio.wait_for(sub.queue.get(), st.config.keepalive)
                except asyncio.TimeoutError:
                    now = await run_in_threadpool(st.store.get, row.id)
                    if now is not None and now.status in FINAL:  # ended without an end line (disk full, crash)
                        yield sse_frame(last + 1, {END_KEY: now.status})
                        return
                    yield ": keepalive\n\n"
                    continue
                if seq > last:
                    last = seq
                    yield sse_frame(seq, data)
                if END_KEY in data:
                    return
        finally:
            st.events.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@api.get("/jobs/{job_id}/files/{name:path}", responses={**_NOT_FOUND, 200: {"content": {"*/*": {}}}},
         response_class=FileResponse, summary="A file the job wrote")
def job_file(request: Request, job_id: str, name: str) -> Response:
    """A file from the job's folder, if ``name`` is exactly one of the job's ``files``; anything else is 404."""
    row = _job(request, job_id)
    path = job_files(_state(request).jobs_dir / row.id).get(name)
    if path is None:
        raise ApiError("not_found", f"job {row.id} has no file {name!r}", where="path name")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=kind, headers={"Content-Security-Policy": "sandbox",
                                                        "X-Content-Type-Options": "nosniff"})


_JSON: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {}}}}


@api.get("/nodes", summary="Every node type (as `reelgraph nodes --json`)", response_class=JSONResponse,
         responses=_JSON)
def nodes(request: Request) -> Response:
    """Every node type the server's plugins provide, with inputs and outputs."""
    summaries = [node_type_summary(nt) for nt in _state(request).validator.registry]
    return JSONResponse(json.loads(json.dumps(summaries, default=str)))


@api.get("/schema", summary="JSON Schema of workflows (as `reelgraph schema`)", response_class=JSONResponse,
         responses=_JSON)
def schema(request: Request) -> Response:
    """The workflow JSON Schema with every node type's inputs."""
    return JSONResponse(workflow_schema(_state(request).validator.registry))


@api.get("/health", response_model=Health, summary="Is the server up")
def health(request: Request) -> Health:
    """The version, workers and job counts."""
    st = _state(request)
    return Health(status="ok", version=__version__, workers=st.pool.workers, workers_ready=st.pool.ready,
                  running=st.pool.busy(), jobs=st.store.counts())


@api.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> dict[str, Any]:
    """The OpenAPI document of this API (generated from the pydantic models)."""
    return request.app.openapi()  # type: ignore[no-any-return]


# -- the web page --------------------------------------------------------------------------------------------

STATIC = "server_static"
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; media-src 'self' blob:; "
                               "connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _static_files() -> dict[str, Any]:
    return {f.name: f for f in resources.files("reelgraph").joinpath(STATIC).iterdir() if f.is_file()}


@page.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> Response:
    """The web page (no data in it: it asks for the token, then talks to the API)."""
    return HTMLResponse(_static_files()["index.html"].read_text(encoding="utf-8"), headers=_PAGE_HEADERS)


@page.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    """The page's script and style sheet, from the package."""
    found = _static_files().get(name)
    if found is None or name == "index.html":
        return JSONResponse(error_body("not_found", f"no static file {name!r}", where="path name"), status_code=404)
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(found.read_bytes(), media_type=kind, headers=_PAGE_HEADERS)
