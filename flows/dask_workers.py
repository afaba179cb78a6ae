"""Dask workers that cannot hang an ingest: their statistical profiler is off where CPython can deadlock.

CPython 3.11 before 3.11.9 and 3.12 before 3.12.3 can deadlock when one thread calls ``sys._current_frames()``
while a garbage collection runs a Python ``gc`` callback and another thread starts or ends
(python/cpython#106883: a lock-order inversion between the runtime's thread-list lock and the GIL). A Dask
worker does all three: its statistical profiler calls ``sys._current_frames()`` every 10 ms, ``distributed``
installs a ``gc`` callback in every worker, and ingest tasks start threads (ffmpeg's pipe readers, the shard
writers). Seen in this project: a ``process-range`` task stuck for ever in ``Thread.start()`` on a worker of
``tests/flows/test_dask_cluster.py`` (one run in twelve on Python 3.11.7), its flow waiting on it.

- The local cluster of an ingest (``flows.ingest.task_runner_for``) is created with the profiler off
  (``without_worker_profiler``), on every Python: nobody reads its profiles (it serves no dashboard), and the
  sampling costs CPU the flow computation could use.
- On an existing cluster (``dask_address``), ``guard_cluster`` registers ``ProfilerGuard``, a worker plugin
  that stops the profiler of each worker (present and future) running an affected Python, with a warning in
  that worker's log; workers on a fixed Python keep theirs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

import dask
from distributed import Client, WorkerPlugin

logger = logging.getLogger(__name__)

PROFILE_CALLBACKS = ("profile", "profile-cycle")  # distributed.Worker.periodic_callbacks of the profiler


def profiler_deadlocks(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """True for the CPython versions with python/cpython#106883 (3.11 < 3.11.9 and 3.12 < 3.12.3; the fix is
    in 3.13 from its first release)."""
    v = tuple(version[:3])
    return v < (3, 11, 9) or (3, 12, 0) <= v < (3, 12, 3)


@contextlib.contextmanager
def without_worker_profiler() -> Iterator[None]:
    """Dask workers created inside this block (an in-process ``LocalCluster``) run no statistical profiler."""
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        yield


class ProfilerGuard(WorkerPlugin):
    """Stops a worker's statistical profiler when the worker's Python has python/cpython#106883."""

    name = "cpfs-profiler-guard"
    idempotent = True  # registering it again (every ingest on the cluster) changes nothing

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed.Worker
        if not profiler_deadlocks():
            return
        # Removed, not only stopped: a worker that is still starting starts every callback left in the dict.
        stopped = [key for key in PROFILE_CALLBACKS if key in worker.periodic_callbacks]
        for key in stopped:
            worker.periodic_callbacks.pop(key).stop()
        if stopped:
            logger.warning("cpfs: statistical profiler of this worker stopped: Python %s can deadlock with it "
                           "(python/cpython#106883); a Python >= 3.11.9 keeps it", sys.version.split()[0])


def guard_cluster(address: str, timeout: str = "30s") -> None:
    """Register ``ProfilerGuard`` on the cluster at ``address`` (its present and future workers)."""
    with Client(address, timeout=timeout) as client:
        client.register_plugin(ProfilerGuard())
