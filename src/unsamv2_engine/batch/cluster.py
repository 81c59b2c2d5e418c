"""Running batch items on Dask: a local cluster of N worker processes, or an existing scheduler.

:func:`dask_executor` opens the client (and the :class:`~distributed.LocalCluster` for
``--workers N``), registers :class:`BatchWorkerSetup` on every worker, present and future, and
yields a :class:`DaskExecutor`. The plugin gives each worker its device (``cuda:<local rank>`` on
a GPU node, else MPS or CPU), limits torch's threads to the node's cores divided by the workers on
that node, and activates the model cache (:mod:`.worker`): a worker loads its model at its first
image and keeps it. Items return small records; masks are written by the workers, never gathered.
A worker that dies (killed, out of memory) has its items rescheduled on the others by Dask; an
item whose workers keep dying is recorded as failed (Dask's ``allowed-failures``, default 3).

This module imports ``distributed`` at import: import it inside the command functions only.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from distributed import Client, LocalCluster, WorkerPlugin, as_completed
from distributed.comm import get_address_host

from unsamv2_engine.errors import UnSAMv2Error

__all__ = ["PLUGIN_NAME", "BatchWorkerSetup", "DaskExecutor", "dask_executor"]

PLUGIN_NAME = "unsamv2-batch"
#: How long to wait for a given scheduler to answer, and for its first worker.
CONNECT_TIMEOUT_S = 30


class SchedulerError(UnSAMv2Error, RuntimeError):
    """The ``--scheduler`` cannot be reached or has no worker."""


class BatchWorkerSetup(WorkerPlugin):
    """Device, torch threads and model cache of one worker (see the module docstring).

    Args:
        device: ``--device`` as given (``auto`` / ``cuda``: ``cuda:<local rank mod GPUs>`` where CUDA exists).
        workers_per_host: host -> number of workers there when the batch started (divides its cores).
    """

    def __init__(self, device: str = "auto", workers_per_host: dict[str, int] | None = None) -> None:
        self.device = device
        self.workers_per_host = dict(workers_per_host or {})

    def setup(self, worker: Any) -> None:
        from unsamv2_engine.batch import worker as state

        host = get_address_host(worker.address)
        local = max(1, self.workers_per_host.get(host, 1))
        nthreads = max(1, int(getattr(worker.state, "nthreads", 1) or 1))
        threads = state.set_threads(max(1, state.cpu_count() // (local * nthreads)))
        state.activate(state.pick_device(state.local_rank(worker.name), self.device), threads)

    def teardown(self, worker: Any) -> None:
        from unsamv2_engine.batch import worker as state

        state.deactivate()


class DaskExecutor:
    """Runs item functions on the cluster of ``client``."""

    def __init__(self, client: Client, description: str) -> None:
        self.client = client
        self.description = description
        self._token = uuid.uuid4().hex[:8]

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """``fn(arg)`` on one worker; its result (small) comes back."""
        return self.client.submit(fn, arg, pure=False, key=f"unsamv2-probe-{self._token}").result()

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        """``(task, fn(task) or the exception)`` as items finish, in any order. Ctrl-C cancels what is left."""
        futures = {self.client.submit(fn, task, pure=False, key=f"unsamv2-item-{self._token}-{i}"): task
                   for i, task in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                task = futures.pop(future)
                try:
                    yield task, future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that kept dying on it (KilledWorker), ...
                    yield task, exc
                future.release()
        finally:
            if futures:
                self.client.cancel(list(futures))


def _workers_per_host(client: Client) -> dict[str, int]:
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return dict(Counter(get_address_host(address) for address in workers))


@contextlib.contextmanager
def dask_executor(*, workers: int = 2, scheduler: str | None = None, device: str = "auto",
                  say: Callable[[str], None] = lambda _m: None) -> Iterator[DaskExecutor]:
    """A :class:`DaskExecutor` on ``scheduler`` (an address such as ``tcp://10.0.0.5:8786``) or on a new
    LocalCluster of ``workers`` processes (one thread each, on 127.0.0.1, no dashboard, no memory limit),
    closed again on exit; the worker plugin is removed on exit either way (its models are freed).

    Raises
    ------
        SchedulerError: the scheduler does not answer within :data:`CONNECT_TIMEOUT_S` or has no worker.
    """
    cluster = None
    if scheduler:
        say(f"connecting to the Dask scheduler at {scheduler} ...")
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); check the address "
                                 "(e.g. tcp://HOST:8786) and that the scheduler is running") from None
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError):
            client.close()
            raise SchedulerError(f"the Dask scheduler at {scheduler} has no worker after {CONNECT_TIMEOUT_S} s; "
                                 "start workers (dask worker ADDRESS, or cluster.scale(N) with dask-jobqueue)"
                                 ) from None
    else:
        from unsamv2_engine.batch.worker import cpu_count

        threads = str(max(1, cpu_count() // workers))
        say(f"starting a local Dask cluster of {workers} worker processes ({threads} torch thread(s) each) ...")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, memory_limit=0, silence_logs=logging.CRITICAL,
                               env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                    "OPENBLAS_NUM_THREADS": threads})
        client = Client(cluster)
    try:
        per_host = _workers_per_host(client)
        n = sum(per_host.values())
        client.register_plugin(BatchWorkerSetup(device, per_host), name=PLUGIN_NAME)
        where = scheduler or "a local cluster"
        yield DaskExecutor(client, f"{n} Dask worker{'s' if n != 1 else ''} on {where}")
    finally:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(PLUGIN_NAME)
        client.close()
        if cluster is not None:
            cluster.close()
