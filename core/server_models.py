"""The server's request and response bodies as pydantic models: the API contract and its OpenAPI document.

Routes return these models, so ``/api/openapi.json`` is generated from the same classes that shape the answers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "finished", "failed", "cancelled"]


class JobRequest(BaseModel):
    """``POST /api/jobs``: a workflow document, values for its parameters, and optionally which outputs to make."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(description="the workflow document (the format of `reelgraph schema`)")
    params: dict[str, Any] = Field(default_factory=dict, description="parameter values by name")
    outputs: list[str] | None = Field(default=None, description="'node' or 'node.output'; default: terminal nodes")


class Created(BaseModel):
    """The answer to an accepted job: it is on disk and queued."""

    id: str
    status: JobStatus


class ProblemOut(BaseModel):
    """One located problem (the engine's ``Problem``, as `reelgraph validate --json` prints it)."""

    code: str
    node: str | None = None
    input: str | None = None
    message: str


class Problems(BaseModel):
    """``422``: the workflow (or the request) is invalid; every problem at once. Nothing was queued."""

    problems: list[ProblemOut]


class ErrorDetail(BaseModel):
    """What went wrong and where (extra keys such as `where`, `line`, `column`, `limit` locate it)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorOut(BaseModel):
    """Every refusal other than 422: ``{"error": {"code", "message", ...}}``."""

    error: ErrorDetail


class JobError(BaseModel):
    """Why a job failed or stopped: an engine error code, the node and input it belongs to, and a message."""

    model_config = ConfigDict(extra="allow")

    code: str
    node: str | None = None
    input: str | None = None
    message: str


class Timings(BaseModel):
    """When the job was submitted, started (its latest attempt) and ended (UNIX seconds), and durations."""

    submitted: float
    started: float | None = None
    finished: float | None = None
    queued_seconds: float | None = Field(default=None, description="from submission to the latest start")
    run_seconds: float | None = Field(default=None, description="the engine's time for the latest attempt")
    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per node: ran/cached and seconds")


class Job(BaseModel):
    """A job as the API shows it."""

    id: str
    status: JobStatus
    name: str | None = None
    params: dict[str, Any]
    requested_outputs: list[str] | None = None
    outputs: dict[str, Any] = Field(description="'node.output' -> value; files in the job folder by name")
    files: list[str] = Field(description="files the job wrote, fetched with /api/jobs/{id}/files/{name}")
    error: JobError | None = None
    timings: Timings
    attempts: int = Field(description="how many times a worker started it (more than 1 after a restart)")
    cancel_requested: bool = False


class JobPage(BaseModel):
    """``GET /api/jobs``: newest first; pass ``next`` as ``before`` for the following page (null: last page)."""

    jobs: list[Job]
    next: int | None = None


class CancelOut(BaseModel):
    """``POST /api/jobs/{id}/cancel``: ``removed`` (it was queued) or ``interrupting`` (it stops at its next step)."""

    id: str
    result: Literal["removed", "interrupting"]
    status: JobStatus


class Health(BaseModel):
    """The server is up: its version, workers, and how many jobs are in each status."""

    status: Literal["ok"]
    version: str
    workers: int
    workers_ready: int
    running: int
    jobs: dict[str, int]
