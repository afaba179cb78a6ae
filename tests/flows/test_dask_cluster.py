"""``ingest`` on an existing Dask cluster: a real ``dask scheduler`` and two ``dask worker`` processes
on loopback, reporting their task runs to the same real Prefect server as the flow."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from cpfs.config import IngestConfig
from flows.dask_workers import profiler_deadlocks
from flows.server_process import free_port
from storage import VideoStore
from tests.flows.conftest import api_of, dask_command, wait_until
from tests.helpers import cut_clip

# Spawns process groups and tears them down: one xdist worker runs every such test, one after the other.
pytestmark = pytest.mark.xdist_group("process-groups")

N_WORKERS = 2


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory, sample_videos) -> list[Path]:
    d = tmp_path_factory.mktemp("dask-input")
    bikes = next(p for p in sample_videos if p.name == "bikes.mp4")
    carphone = next(p for p in sample_videos if p.name == "carphone_pristine.mp4")
    return [cut_clip(bikes, d / "bikes.mp4", 8), cut_clip(carphone, d / "carphone.mp4", 8)]


@pytest.mark.slow
def test_ingest_runs_its_tasks_on_the_workers_of_an_existing_cluster(real_prefect_server, client_env,
                                                                     processes, tmp_path, two_clips):
    from distributed import Client
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                FlowRunFilterParentFlowRunId, TaskRunFilter, TaskRunFilterFlowRunId)

    t0 = time.perf_counter()
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    processes.start("scheduler", dask_command("scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"),
                    client_env, cwd=tmp_path)
    # The workers get PREFECT_API_URL (client_env): without it each would start a temporary server of
    # its own and the flow's server would never hear of the task runs.
    # A Dask worker puts its scratch folder, which holds a `storage/` spill folder, first on sys.path; the
    # install keeps this project's `storage` ahead of it (tests/test_packaging.py), with no PYTHONPATH here.
    worker_env = client_env
    for i in range(N_WORKERS):
        processes.start(f"worker-{i}", dask_command(
            "worker", address, "--name", f"w{i}", "--nthreads", "1", "--no-nanny", "--no-dashboard",
            "--host", "127.0.0.1", "--local-directory", str(tmp_path / f"w{i}"), "--memory-limit", "1GiB"),
            worker_env, cwd=tmp_path)
    with Client(address, timeout="60s") as dask:
        dask.wait_for_workers(N_WORKERS, timeout=120)
        t_cluster = time.perf_counter()

        store = tmp_path / "store.zarr"
        cfg = IngestConfig.model_validate({
            "inputs": [str(p) for p in two_clips], "store": {"path": str(store), "shard_frames": 2},
            "decode": {"short_side": 48, "max_frames": 6}, "flow": {"backend": "opencv-dis"},
            "shards_per_task": 1, "dask_address": address})
        cfg_file = tmp_path / "ingest.json"
        cfg_file.write_text(cfg.model_dump_json(by_alias=True))
        # The flow runs in its own process (the `cpfs ingest` command) so that a cluster that lost its
        # workers fails this test on time instead of leaving the flow waiting forever. The flags repeat
        # the file's values: the command's flag defaults take precedence over --config.
        cli = processes.start("cpfs-ingest", [
            str(Path(sys.executable).parent / "cpfs"), "ingest", *cfg.inputs, "--config", str(cfg_file),
            "--store", cfg.store.path, "--shard-frames", "2", "--size", "48", "--max-frames", "6",
            "--backend", "opencv-dis", "--dask-address", address], client_env, cwd=tmp_path)
        wait_until(lambda: cli.poll() is not None, 300, "`cpfs ingest --dask-address` to finish",
                   every_s=1.0, check=processes.check_alive_except("cpfs-ingest"))
        t_run = time.perf_counter()
        assert cli.returncode == 0, processes.log("cpfs-ingest")

        with api_of(real_prefect_server), get_client(sync_client=True) as client:
            # This test's run: the one whose store parameter is this test's store.
            runs = [r for r in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest"])))
                    if r.parameters.get("config", {}).get("store", {}).get("path") == str(store)]
            assert len(runs) == 1, runs
            (run,) = runs
            assert run.state.is_completed(), run.state
            (sub,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
            # The workers' task runs reached the same server: 2 identify (content hash) + 2 prepare +
            # 2 x 3 ranges (6 frames in shards of 2) + 2 finalize, all completed.
            expected = {"identify_video": 2, "prepare_video": 2, "process_range": 6, "finalize_video": 2}
            seen: dict[str, int] = {}

            def recorded() -> bool:
                seen.clear()
                for tr in client.read_task_runs(task_run_filter=TaskRunFilter(
                        flow_run_id=TaskRunFilterFlowRunId(any_=[sub.id]))):
                    if tr.state is not None and tr.state.is_completed():
                        key = tr.task_key.split("-", 1)[0]  # "<function>-<code hash>"
                        seen[key] = seen.get(key, 0) + 1
                return seen == expected

            wait_until(recorded, 60, f"completed task runs {expected} of subflow {sub.id} (have {seen})")

        executed = dask.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == N_WORKERS
    assert sum(executed.values()) >= sum(expected.values()), executed
    assert all(n > 0 for n in executed.values()), f"a worker ran nothing: {executed}"
    # Where CPython can deadlock in the workers' statistical profiler (python/cpython#106883; it hung this test
    # once in twelve runs on 3.11.7), the ingest stopped it on every worker, and said so in the worker's log.
    for i in range(N_WORKERS):
        said = "statistical profiler of this worker stopped" in processes.log(f"worker-{i}")
        assert said is profiler_deadlocks(), processes.log(f"worker-{i}")[-2000:]

    stored = VideoStore.open(cfg.store, create=False)
    assert len(stored.complete_ids()) == 2
    print(f"\ncluster up: {t_cluster - t0:.1f} s; ingest of 2 clips on it: {t_run - t_cluster:.1f} s; "
          f"tasks per worker: {executed}")
