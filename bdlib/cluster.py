"""Dask clients for studies: a local cluster sized to the machine, or an existing one.

Why these sizes: every cell is a torch training loop. Torch already parallelises one step
over its intra-op threads, so a worker process per core with one Dask thread and one torch
thread each keeps the cores busy without oversubscription (two workers × two torch threads
on two cores is slower than either alone). ``$BDLIB_WORKERS`` overrides the worker count;
each worker then gets ``cores // workers`` torch threads.

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


def local_layout(cores: int | None = None, workers: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads per worker) for ``cores`` CPU cores."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = os.environ.get("BDLIB_WORKERS")
    workers = workers or (int(env) if env else cores)
    if workers < 1:
        raise ValueError(f"BDLIB_WORKERS must be >= 1, got {workers}")
    return workers, max(1, cores // workers)


def worker_env(torch_threads: int) -> dict[str, str]:
    """Environment of a local worker: thread counts fixed before torch is imported, and the
    project's malloc settings (bdlib/allocator.py)."""
    threads = str(torch_threads)
    env = {k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env.update({k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items()})
    env["BDLIB_TORCH_THREADS"] = threads
    return env


@contextlib.contextmanager
def get_client(scheduler: str | None = None, workers: int | None = None):
    """A ``distributed.Client``: to ``scheduler`` (or ``$BDLIB_SCHEDULER``) if given, else to a
    new ``LocalCluster`` of :func:`local_layout` workers, closed on exit. Prints the
    dashboard link."""
    from distributed import Client, LocalCluster

    scheduler = scheduler or os.environ.get("BDLIB_SCHEDULER")
    if scheduler:
        client = Client(scheduler)
        cluster = None
    else:
        n, threads = local_layout(workers=workers)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               env=worker_env(threads), silence_logs=40)
        client = Client(cluster)
        print(f"Dask local cluster: {n} worker(s) x {threads} torch thread(s)", file=sys.stderr)
    print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def show_progress(futures, enabled: bool = True) -> None:
    """Dask's own progress bar in the terminal (blocks until the futures finish); without
    it, just wait. A failed cell re-raises with its traceback when gathered."""
    from distributed import progress, wait

    if enabled:
        progress(futures, notebook=False)
        print(file=sys.stderr)
    wait(futures)
