"""Runs whose process was killed, against a real Prefect server: ``cpfs recover`` makes a run left Running
retryable, and a retried run marks the subflow and task runs its dead attempt left Running Crashed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.states import Crashed

from tests.flows.conftest import REPO, api_of, run_cli, wait_until

# Spawns process groups and tears them down: one xdist worker runs every such test, one after the other.
pytestmark = pytest.mark.xdist_group("process-groups")

ENTRYPOINT = "tests/flows/recovery_flows.py:parent"


def _name(state) -> str | None:  # noqa: ANN001
    """A run's state name; None for a run the server has created but not yet given a state (seen once in 27
    soak runs on a loaded machine)."""
    return None if state is None else state.name


def _states(parent_id: UUID) -> dict[str, list[str]]:
    """State names of the parent, its task runs (the stage task and the subflow's own task run in its
    parent), its child flow runs and their task runs."""
    with get_client(sync_client=True) as client:
        out = {"parent": [_name(client.read_flow_run(parent_id).state)]}
        out["stage"] = [_name(t.state) for t in client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[parent_id])))]
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
        out["child"] = [_name(c.state) for c in children]
        out["wait"] = [_name(t.state) for t in client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[c.id for c in children] or [UUID(int=0)])))]
    return out


def _start_then_kill(server, client_env, processes, tmp_path: Path) -> tuple[UUID, Path]:
    """Run the parent flow in a process of its own, kill -9 it while every run inside is Running."""
    go = tmp_path / "go"
    proc = processes.start("parent", [sys.executable, "tests/flows/recovery_flows.py", str(go)], client_env, cwd=REPO)
    found: list[UUID] = []

    def all_running() -> bool:
        with get_client(sync_client=True) as client:
            runs = [r for r in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["recovery-parent"])))
                    if r.parameters.get("path") == str(go)]
        if not runs:
            return False
        found[:] = [runs[0].id]
        s = _states(runs[0].id)
        return s["parent"] == s["child"] == s["wait"] == ["Running"] and set(s["stage"]) == {"Running"}

    with api_of(server):
        wait_until(all_running, 240, "the parent, its stage task, the subflow and its task to be Running",
                   every_s=0.5, check=processes.check_alive)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return found[0], go


def _cpfs(args: list[str], env: dict) -> subprocess.CompletedProcess:
    exe = shutil.which("cpfs", path=str(Path(sys.executable).parent))
    return subprocess.run([exe, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)


def test_cpfs_recover_makes_a_run_left_running_retryable(real_prefect_server, client_env, processes, tmp_path):
    parent_id, go = _start_then_kill(real_prefect_server, client_env, processes, tmp_path)
    with api_of(real_prefect_server):
        assert _states(parent_id)["parent"] == ["Running"]  # nothing left to report the kill
    refused = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "retry", str(parent_id), "--entrypoint",
                              ENTRYPOINT], env=client_env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert refused.returncode != 0 and "cannot be retried" in " ".join((refused.stdout + refused.stderr).split())

    r = _cpfs(["recover", str(parent_id)], client_env)
    assert r.returncode == 0, r.stdout + r.stderr
    # (the subflow's own task run in the parent follows the subflow's state: the server updates it)
    assert f"flow run {parent_id} was RUNNING; marked Crashed: 2 flow run(s), 2 task run(s)" in r.stdout
    with api_of(real_prefect_server):
        s = _states(parent_id)
    assert {k: set(v) for k, v in s.items()} == {k: {"Crashed"} for k in s} and len(s["stage"]) == 2, s

    go.write_text("done")
    run_cli(["flow-run", "retry", str(parent_id), "--entrypoint", ENTRYPOINT], client_env)
    with api_of(real_prefect_server):
        s = _states(parent_id)
    assert s["parent"] == ["Completed"] and sorted(s["child"]) == ["Completed", "Crashed"], s

    bad = _cpfs(["recover", "not-a-run"], client_env)
    assert bad.returncode == 2 and "is not a flow run id" in bad.stderr and "Traceback" not in bad.stderr


def test_a_retried_run_marks_the_children_its_dead_attempt_left_running_crashed(
        real_prefect_server, client_env, processes, tmp_path):
    parent_id, go = _start_then_kill(real_prefect_server, client_env, processes, tmp_path)
    with api_of(real_prefect_server), get_client(sync_client=True) as client:
        # What a surviving worker does for the flow run it started; it does not know the subflows inside.
        client.set_flow_run_state(parent_id, Crashed(message="the process exited with -9"), force=True)
    go.write_text("done")
    run_cli(["flow-run", "retry", str(parent_id), "--entrypoint", ENTRYPOINT], client_env)
    with api_of(real_prefect_server):
        s = _states(parent_id)
    # The dead attempt's stage task, subflow and its task are Crashed; the retry's own ones Completed.
    assert s["parent"] == ["Completed"], s
    assert sorted(s["child"]) == sorted(s["wait"]) == ["Completed", "Crashed"], s
    assert sorted(s["stage"]) == ["Completed", "Completed", "Crashed", "Crashed"], s
