"""The Python API: an :class:`Engine` (plugins + caches) and the one-call :func:`run` / :func:`validate`."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from .cache import DEFAULT_MEMORY_BYTES, DiskCache, MemoryCache
from .errors import Problem, WorkflowInvalid
from .events import Sink
from .executor import Executor, RunResult
from .memory import default_limit
from .paths import Sandbox
from .registry import ENTRY_POINT_GROUP, NodeRegistry, PluginInfo, PluginSet
from .validate import Plan, plan_workflow
from .workflow import Workflow, load_document, parse_document

WorkflowLike = str | Path | dict[str, Any] | Workflow

#: Where relative output paths land when no ``out_dir`` is given.
DEFAULT_OUT_DIR = Path("outputs")


def read_workflow(workflow: WorkflowLike) -> tuple[Workflow | None, list[Problem], Path]:
    """Parse a workflow given as a path, a dict or a model; return it, its format problems and its folder.

    A workflow's folder is where relative input paths resolve: the file's folder, or the current
    folder for a dict or model.
    """
    if isinstance(workflow, Workflow):
        return workflow, [], Path.cwd()
    if not isinstance(workflow, str | Path):
        wf, problems = parse_document(workflow)
        return wf, problems, Path.cwd()
    path = Path(workflow)
    try:
        folder = path.parent.resolve()
        doc = load_document(path)
    except (OSError, ValueError) as exc:
        where = Path.cwd() if "\x00" in str(workflow) else path.parent.absolute()
        return None, [Problem("bad_format", f"cannot read workflow {str(workflow)!r}: {exc}")], where
    wf, problems = parse_document(doc)
    return wf, problems, folder


class Engine:
    """Plugins, node registry, caches and executor for running many workflows in one process.

    Runs on one engine share the in-memory cache, so re-running a workflow after changing one literal
    re-executes only that node and its descendants. With ``cache_dir``, results that can be stored
    safely also persist across processes (at most ``cache_size`` bytes of them, least recently used
    removed first).
    """

    def __init__(
        self,
        plugins: Iterable[Any] = (),
        *,
        cache_dir: str | Path | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        cache_size: int | None = None,
        builtin: bool = True,
        entry_points: bool = True,
        env: bool = True,
    ) -> None:
        self.plugin_set = PluginSet().load(
            plugins, builtin=builtin, entry_points_group=ENTRY_POINT_GROUP if entry_points else None, env=env
        )
        disk = DiskCache(cache_dir, max_bytes=cache_size) if cache_dir else None
        self.executor = Executor(MemoryCache(memory_bytes), disk)

    @property
    def registry(self) -> NodeRegistry:
        """The node types this engine knows."""
        return self.plugin_set.registry

    @property
    def plugins(self) -> list[PluginInfo]:
        """Every plugin this engine tried to load, with its node types or its load error."""
        return self.plugin_set.plugins

    def check(
        self,
        workflow: WorkflowLike,
        params: dict[str, Any] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        out_dir: str | Path | None = None,
        allow_paths: Iterable[str | Path] = (),
        trust_params: bool = True,
    ) -> tuple[Plan | None, list[Problem], Sandbox]:
        """Parse and validate without running: the plan (None when unparseable), all problems, the sandbox.

        ``params`` are the caller's intent: paths in them resolve against the current folder and are allowed
        wherever they point, unless ``trust_params=False`` (a server passing on a remote client's values), which
        sandboxes them like the workflow's own values."""
        wf, problems, base = read_workflow(workflow)
        document = Path(workflow) if isinstance(workflow, str | Path) and wf is not None else None
        sandbox = Sandbox(base, Path(out_dir) if out_dir is not None else DEFAULT_OUT_DIR, allow_paths,
                          workflow_file=document)
        if wf is None:
            return None, problems, sandbox
        plan, problems = plan_workflow(wf, self.registry, params, outputs, problems, sandbox, trust_params)
        return plan, problems, sandbox

    def validate(
        self,
        workflow: WorkflowLike,
        params: dict[str, Any] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        out_dir: str | Path | None = None,
        allow_paths: Iterable[str | Path] = (),
        trust_params: bool = True,
    ) -> list[Problem]:
        """Every problem in the workflow (empty when valid). Loads no model and runs nothing."""
        return self.check(workflow, params, outputs, out_dir=out_dir, allow_paths=allow_paths,
                          trust_params=trust_params)[1]

    def run(
        self,
        workflow: WorkflowLike,
        params: dict[str, Any] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        out_dir: str | Path | None = None,
        allow_paths: Iterable[str | Path] = (),
        overwrite: bool | Path = False,
        max_memory: int | Literal["auto"] | None = "auto",
        events: Iterable[Sink] = (),
        trust_params: bool = True,
    ) -> RunResult:
        """Validate, then run the nodes that ``outputs`` need (all terminal nodes when None).

        Paths in the workflow must stay inside its folder, ``out_dir`` (default ``./outputs``) and
        ``allow_paths``. Output files never replace existing ones unless ``overwrite`` (``True``, or a folder:
        only files inside it), and never the workflow file or an input of the run. Nodes refuse
        (``too_large``) allocations above ``max_memory`` bytes (``"auto"``: 80 % of available memory;
        None: no limit).
        Raises :class:`WorkflowInvalid` (nothing ran), :class:`NodeFailed` or :class:`RunInterrupted`
        (finished results stay cached; the partial record is ``exc.result``).
        """
        plan, problems, sandbox = self.check(workflow, params, outputs, out_dir=out_dir, allow_paths=allow_paths,
                                             trust_params=trust_params)
        if problems or plan is None:
            raise WorkflowInvalid(problems)
        limit = default_limit() if max_memory == "auto" else max_memory
        return self.executor.run(plan, sandbox=sandbox, overwrite=overwrite, max_memory=limit, sinks=events)

    def interrupt(self) -> None:
        """Ask every run in progress on this engine to stop at its next progress tick or node boundary.

        Thread-safe. An engine may run workflows from several threads at once: each run keeps its own state
        and stop flag, the caches are shared under locks, and output names are claimed atomically."""
        self.executor.interrupt()


_engines: dict[tuple[Any, ...], Engine] = {}
_engines_lock = threading.Lock()


def _shared_engine(plugins: Iterable[Any], cache_dir: str | Path | None) -> Engine:
    plugins = tuple(plugins)
    key = (plugins, str(Path(cache_dir).expanduser().resolve()) if cache_dir else None)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = Engine(plugins, cache_dir=cache_dir)
        return engine


def run(
    workflow: WorkflowLike,
    params: dict[str, Any] | None = None,
    outputs: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    plugins: Iterable[Any] = (),
    *,
    out_dir: str | Path | None = None,
    allow_paths: Iterable[str | Path] = (),
    overwrite: bool | Path = False,
    max_memory: int | Literal["auto"] | None = "auto",
    events: Iterable[Sink] = (),
) -> RunResult:
    """Run a workflow (path, dict or :class:`Workflow`) and return its :class:`RunResult`.

    Calls with the same ``plugins`` and ``cache_dir`` share one :class:`Engine`, hence one in-memory
    cache: a second call re-runs only what changed. See :meth:`Engine.run` for paths and errors.
    """
    return _shared_engine(plugins, cache_dir).run(workflow, params, outputs, out_dir=out_dir,
                                                  allow_paths=allow_paths, overwrite=overwrite, max_memory=max_memory,
                                                  events=events)


def validate(
    workflow: WorkflowLike,
    params: dict[str, Any] | None = None,
    outputs: Sequence[str] | None = None,
    plugins: Iterable[Any] = (),
    *,
    out_dir: str | Path | None = None,
    allow_paths: Iterable[str | Path] = (),
) -> list[Problem]:
    """Every problem in the workflow, located and coded (empty when valid); runs nothing."""
    return _shared_engine(plugins, None).validate(workflow, params, outputs, out_dir=out_dir,
                                                  allow_paths=allow_paths)
