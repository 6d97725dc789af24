"""Dask clients for studies: a local cluster sized to the machine, or an existing one.

Why these sizes: every cell is a torch training loop, and torch already parallelises one
step over its intra-op threads. Measured on the 2-core CI machine (benchmarks/study_grid.py,
smoke grid): one torch thread per worker made every cell 2-3x slower than serial with two
threads, so two such workers were slower in all (0.67x) than one process. The local cluster
therefore gives each worker up to 4 torch threads: ``workers = max(1, cores // 4)``, the
cores divided evenly among them (2 cores: 1 worker x 2 threads; 16 cores: 4 x 4), so torch
threads never oversubscribe the cores. ``$BDLIB_WORKERS`` overrides the worker count.

An existing cluster — a long-running ``dask scheduler`` or Slurm through dask-jobqueue —
is given by address (``--scheduler tcp://HOST:8786`` or ``$BDLIB_SCHEDULER``). Its workers
must import ``bdlib`` and see the same store path (``$BDLIB_DATA`` on a shared filesystem):
the store's per-key file locks then keep two workers from computing one artifact twice.
"""
from __future__ import annotations

import contextlib
import os
import sys

from .allocator import ALLOCATOR_ENV


#: torch threads a local worker gets at most (see the module docstring for why)
THREADS_PER_WORKER = 4


def local_layout(cores: int | None = None, workers: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads per worker) for ``cores`` CPU cores."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = os.environ.get("BDLIB_WORKERS")
    workers = workers or (int(env) if env else max(1, cores // THREADS_PER_WORKER))
    if workers < 1:
        raise ValueError(f"BDLIB_WORKERS must be >= 1, got {workers}")
    return workers, max(1, cores // workers)


#: malloc settings a Dask worker needs on top of :data:`bdlib.allocator.ALLOCATOR_ENV`. A worker
#: runs each task in a thread of its own, and glibc serves a non-main thread from a per-thread
#: arena (small mmap'd heaps) instead of the main heap that ALLOCATOR_ENV tunes; one arena puts
#: the task back on the main heap, as in a serial run. Measured on the 2-core machine (stop 20):
#: GN-FT exact, default profile, BadNets victim, 30 epochs, 3 runs each: on a 1-worker local
#: cluster with glibc's arenas (MALLOC_ARENA_MAX=16) 51.6-53.9 s, with this 23.9-28.4 s;
#: in-process 25.5-27.0 s.
WORKER_MALLOC_ENV: dict[str, str] = {"MALLOC_ARENA_MAX": "1"}


def worker_env(torch_threads: int) -> dict[str, str]:
    """Environment of a local worker, set before its process starts: thread counts, and the
    project's malloc settings (bdlib/allocator.py, plus :data:`WORKER_MALLOC_ENV`; a value in
    this environment wins). Workers of an existing cluster need the same variables in theirs."""
    threads = str(torch_threads)
    env = {k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env.update({k: os.environ.get(k, v) for k, v in {**ALLOCATOR_ENV, **WORKER_MALLOC_ENV}.items()})
    env["BDLIB_TORCH_THREADS"] = threads
    return env


@contextlib.contextmanager
def get_client(scheduler: str | None = None, workers: int | None = None):
    """A ``distributed.Client``: to ``scheduler`` (or ``$BDLIB_SCHEDULER``) if given, else to a
    new ``LocalCluster`` of :func:`local_layout` workers, closed on exit. Prints the
    dashboard link."""
    import dask
    from distributed import Client, LocalCluster

    scheduler = scheduler or os.environ.get("BDLIB_SCHEDULER")
    # Dask's nanny copies its pre-spawn variables into this process's os.environ for good, and a
    # variable already there wins over the config: a second local cluster in one process (another
    # layout) started its workers with the first one's thread counts. So the workers' variables are
    # put in os.environ while the cluster lives, and this process's environment is restored after.
    restore = _environment_restorer()
    client = cluster = None
    try:
        if scheduler:
            client = Client(scheduler)
        else:
            n, threads = local_layout(workers=workers)
            # "pre-spawn": glibc and OpenMP read these once, at process start. Dask's own default here
            # (MALLOC_TRIM_THRESHOLD_=65536) trims the heap after every pass: 2-4x slower torch steps.
            env = worker_env(threads)
            os.environ.update(env)
            try:
                with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
                    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=40)
            except RuntimeError as exc:  # typically: spawned workers re-imported an unguarded script
                raise RuntimeError(
                    "could not start the local Dask cluster's workers. From a script, put the code that runs a "
                    "study under `if __name__ == \"__main__\":` (worker processes re-import the script), or run it "
                    "in this process with Study.run(serial=True) / `python -m bdlib study --serial`") from exc
            client = Client(cluster)
            print(f"Dask local cluster: {n} worker(s) x {threads} torch thread(s)", file=sys.stderr)
        print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
        yield client
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        restore()


def _environment_restorer():
    """A function that puts ``os.environ`` back as it is now (values changed, added or removed
    since are undone)."""
    saved = dict(os.environ)

    def restore() -> None:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value

    return restore


def show_progress(futures, enabled: bool = True) -> None:
    """Dask's own progress bar in the terminal (blocks until the futures finish); without
    it, just wait. A failed cell re-raises with its traceback when gathered."""
    from distributed import progress, wait

    if enabled:
        progress(futures, notebook=False)
        print(file=sys.stderr)
    wait(futures)
