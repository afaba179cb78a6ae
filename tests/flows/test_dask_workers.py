"""Dask workers of an ingest run no statistical profiler where CPython can deadlock (python/cpython#106883)."""

from __future__ import annotations

import pytest
from distributed import Client, LocalCluster

import flows.dask_workers as dw


@pytest.mark.parametrize("version, affected", [
    ((3, 11, 7), True), ((3, 11, 8), True), ((3, 11, 9), False), ((3, 11, 12), False),
    ((3, 12, 0), True), ((3, 12, 2), True), ((3, 12, 3), False), ((3, 13, 0), False), ((3, 10, 14), True),
])
def test_affected_pythons(version, affected):
    assert dw.profiler_deadlocks(version) is affected


def _profiler_running(cluster: LocalCluster) -> dict[str, bool]:
    (worker,) = cluster.workers.values()
    return {k: worker.periodic_callbacks[k].is_running() for k in dw.PROFILE_CALLBACKS
            if k in worker.periodic_callbacks}


def _cluster() -> LocalCluster:
    return LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)


def test_a_local_cluster_made_for_an_ingest_has_no_profiler():
    with _cluster() as plain:
        assert _profiler_running(plain) == {"profile": True, "profile-cycle": True}  # Dask's default: on
    with dw.without_worker_profiler(), _cluster() as ours:
        assert _profiler_running(ours) == {}


@pytest.mark.parametrize("affected", [True, False])
def test_the_guard_stops_the_profiler_of_workers_on_an_affected_python(monkeypatch, affected):
    monkeypatch.setattr(dw, "profiler_deadlocks", lambda version=None: affected)
    with _cluster() as cluster:
        dw.guard_cluster(cluster.scheduler_address)
        assert _profiler_running(cluster) == ({} if affected else {"profile": True, "profile-cycle": True})
        # A worker that joins later gets the plugin too.
        cluster.scale(2)
        with Client(cluster) as c:
            c.wait_for_workers(2, timeout=60)
        for worker in cluster.workers.values():
            running = [worker.periodic_callbacks[k].is_running() for k in dw.PROFILE_CALLBACKS
                       if k in worker.periodic_callbacks]
            assert running == ([] if affected else [True, True])
        dw.guard_cluster(cluster.scheduler_address)  # again (the next ingest): no error

