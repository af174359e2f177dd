"""The Ray executor: a pool of Ray actors, each holding one engine with its models loaded, runs a batch.

Each actor is a :class:`~reelgraph.batch.RunWorker` in its own process: the first run on an actor loads
the model, later runs on it reuse the loaded model and the actor's in-memory cache. Actors ask Ray for
``num_gpus=1`` each where the cluster has GPUs (so each holds a model on its own GPU) and for
``cpus_per_actor`` CPUs otherwise. The driver hands out runs one at a time to whichever actor is free,
streams each run's events back live (an actor method that is a generator), and collects outcomes;
outputs are written by the actors into the run folders, which must be on storage the driver and all
actors share.

Ray is an optional extra (``pip install 'reelgraph[ray]'``): it is imported only when a batch runs here.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .batch import (
    BatchError,
    BatchJob,
    EngineSettings,
    RunOutcome,
    RunSpec,
    RunWorker,
    failed_outcome,
    finished_event,
)
from .events import Event, Sink

#: What to tell a user whose environment lacks Ray.
INSTALL_HINT = ("the ray executor needs Ray, an optional extra: pip install 'reelgraph[ray]' "
                "(or pip install ray); or use --executor local")


def import_ray() -> Any:
    """Import and return the ``ray`` module, or raise :class:`BatchError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BatchError(INSTALL_HINT) from exc
    return ray


class EngineActor:
    """The body of each Ray actor: one engine for the actor's lifetime, so models stay loaded between runs."""

    def __init__(self, settings: EngineSettings, index: int, threads: int = 1) -> None:
        # Torch threads follow the actor's CPU share, not the node's core count (unless the user set them).
        os.environ.setdefault("REELGRAPH_THREADS", str(threads))
        self.worker = RunWorker(settings, f"ray-{index}@{socket.gethostname()}:{os.getpid()}")

    def ready(self) -> str:
        """The worker's name, once the actor is up (plugins loaded); the driver waits for this."""
        return self.worker.name

    def run(self, job: BatchJob, spec: RunSpec) -> Iterator[Event | RunOutcome]:
        """Run one run; yield its events as they happen, then its :class:`RunOutcome` last."""
        items: queue.Queue[tuple[str, Any]] = queue.Queue()

        def work() -> None:
            try:
                items.put(("outcome", self.worker.run(job, spec, lambda ev: items.put(("event", ev)))))
            except BaseException as exc:  # handed to the driver as this run's failure
                items.put(("error", exc))

        threading.Thread(target=work, name=f"run-{spec.run_id}", daemon=True).start()
        while True:
            kind, item = items.get()
            if kind == "error":
                raise item
            yield item
            if kind == "outcome":
                return


class RayExecutor:
    """Runs a batch on a pool of Ray actors (see the module doc); actors are kept between batches.

    ``address`` is handed to ``ray.init`` (``"auto"``, ``"host:6379"`` or ``"ray://host:10001"``); with
    None a Ray instance already started in this process is used, else ``RAY_ADDRESS``, else a new local
    one. ``actors`` defaults to one per GPU, else one per ``cpus_per_actor`` CPUs in the cluster, and never
    more than the runs to do. An actor that dies (out of memory, say) fails the run it was running with
    ``worker_died`` and is restarted by Ray up to ``max_restarts`` times (loading its model again); the
    other runs go on. Call :meth:`close` (or use ``with``) to stop the actors, and Ray if this executor
    started it.
    """

    name = "ray"

    def __init__(self, address: str | None = None, actors: int | None = None, *, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float | None = None, max_restarts: int = 3, ready_timeout: float = 600.0,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        if actors is not None and actors < 1:
            raise BatchError(f"--actors must be at least 1, got {actors}")
        self.address = address
        self.actors = actors
        self.cpus_per_actor = cpus_per_actor
        self.gpus_per_actor = gpus_per_actor
        self.max_restarts = max_restarts
        self.ready_timeout = ready_timeout
        self.init_kwargs = dict(init_kwargs or {})
        self._ray: Any = None
        self._started_ray = False
        self._pool: list[Any] = []
        self._settings: EngineSettings | None = None
        self.placement: dict[str, float] = {}

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> Any:
        """Import Ray and connect to (or start) a cluster; returns the ``ray`` module."""
        if self._ray is None:
            ray = import_ray()
            if not ray.is_initialized():
                kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                          "logging_level": "ERROR", **self.init_kwargs}
                ray.init(address=self.address, **kwargs)
                self._started_ray = True
            self._ray = ray
        return self._ray

    def _plan(self, ray: Any, runs: int) -> tuple[int, float, float]:
        """How many actors, and the CPUs and GPUs each asks for."""
        resources = ray.cluster_resources()
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        count = self.actors
        if count is None:
            if gpus:
                capacity = resources.get("GPU", 0) / gpus
            else:
                capacity = resources.get("CPU", 1) / max(self.cpus_per_actor, 1e-9)
            count = max(1, int(capacity))
        return max(1, min(count, runs)), self.cpus_per_actor, gpus

    def start(self, settings: EngineSettings, runs: int) -> list[Any]:
        """Start (or reuse) the actor pool for these engine settings; returns the actor handles."""
        if any(not isinstance(p, str) for p in settings.plugins):
            raise BatchError("the ray executor takes plugins as module names or .py paths, not module objects")
        ray = self.connect()
        count, cpus, gpus = self._plan(ray, runs)
        if self._pool and settings == self._settings and len(self._pool) >= count:
            return self._pool
        self.stop_actors()
        remote = ray.remote(EngineActor).options(num_cpus=cpus, num_gpus=gpus, max_restarts=self.max_restarts)
        threads = max(1, int(cpus))
        self._pool = [remote.remote(settings, i, threads) for i in range(count)]
        self._settings = settings
        self.placement = {"actors": count, "num_cpus": cpus, "num_gpus": gpus}
        return self._pool

    def execute(self, job: BatchJob, runs: Sequence[RunSpec], emit: Sink) -> Iterator[RunOutcome]:
        """Run ``runs`` on the pool, yielding outcomes as they complete; events go to ``emit`` live."""
        if not runs:
            return
        pool = self.start(job.engine, len(runs))
        ray = self._ray
        work: queue.Queue[RunSpec] = queue.Queue()
        for spec in runs:
            work.put(spec)
        results: queue.Queue[tuple[str, RunSpec | None, Any]] = queue.Queue()
        any_ready = threading.Event()
        stop = threading.Event()

        def serve(actor: Any) -> None:
            try:
                name = ray.get(actor.ready.remote())
            except Exception as exc:
                results.put(("dead", None, f"{type(exc).__name__}: {exc}"))
                return
            any_ready.set()
            while not stop.is_set():
                try:
                    spec = work.get_nowait()
                except queue.Empty:
                    return
                started = time.time()
                try:
                    for ref in actor.run.remote(job, spec):
                        item = ray.get(ref)
                        results.put(("outcome" if isinstance(item, RunOutcome) else "event", spec, item))
                except ray.exceptions.RayActorError as exc:
                    fail(spec, failed_outcome(spec.run_id, name, "worker_died",
                                              f"the Ray actor died during this run: {exc}", started))
                    try:  # Ray restarts a dead actor (max_restarts); carry on with it once it is back
                        name = wait_until_back(actor)
                    except Exception:
                        return
                except Exception as exc:
                    fail(spec, failed_outcome(spec.run_id, name, "worker_error", f"{type(exc).__name__}: {exc}",
                                              started))

        def wait_until_back(actor: Any) -> str:
            # While Ray restarts an actor, calls may fail fast with ActorUnavailableError: retry until the
            # restart finishes; a RayActorError (restarts used up) or the ready timeout ends the wait.
            until = time.monotonic() + self.ready_timeout
            while True:
                try:
                    return ray.get(actor.ready.remote())
                except ray.exceptions.ActorUnavailableError:
                    if time.monotonic() > until or stop.is_set():
                        raise
                    time.sleep(0.2)

        def fail(spec: RunSpec, outcome: RunOutcome) -> None:
            results.put(("event", spec, finished_event(outcome)))
            results.put(("outcome", spec, outcome))

        threads = [threading.Thread(target=serve, args=(a,), name=f"ray-driver-{i}", daemon=True)
                   for i, a in enumerate(pool)]
        for t in threads:
            t.start()
        pending = {spec.run_id: spec for spec in runs}
        deaths: list[str] = []
        deadline = time.monotonic() + self.ready_timeout
        completed = False
        try:
            while pending:
                try:
                    kind, spec, item = results.get(timeout=0.2)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and results.empty():
                        break
                    if not any_ready.is_set() and time.monotonic() > deadline:
                        raise BatchError(f"no Ray actor started within {self.ready_timeout:.0f}s; each asks for "
                                         f"{self.placement}; the cluster has {ray.cluster_resources()}") from None
                    continue
                if kind == "event":
                    emit(item)
                elif kind == "dead":
                    deaths.append(item)
                elif spec is not None and spec.run_id in pending:
                    del pending[spec.run_id]
                    yield item
                    if item.status == "interrupted":
                        return
            why = deaths[0] if deaths else "every actor stopped"
            for spec in list(pending.values()):  # no actor left to run these
                del pending[spec.run_id]
                outcome = failed_outcome(spec.run_id, "ray", "no_worker", f"no Ray actor could run this: {why}")
                emit(finished_event(outcome))
                yield outcome
            completed = True
        finally:
            stop.set()
            if not completed:  # interrupted or failed: actors may be busy with runs nobody waits for
                self.stop_actors()

    def stop_actors(self) -> None:
        """Kill the pool's actors (their loaded models go with them)."""
        if self._ray is not None:
            for actor in self._pool:
                with contextlib.suppress(Exception):  # already gone
                    self._ray.kill(actor)
        self._pool = []
        self._settings = None

    def close(self) -> None:
        """Stop the actors, and Ray itself if this executor started it."""
        self.stop_actors()
        if self._ray is not None and self._started_ray:
            self._ray.shutdown()
        self._ray = None
        self._started_ray = False
