"""Runs left ``Running`` by a process that died, marked ``Crashed`` so that they can be retried.

When the process of a flow run is killed (``kill -9``, out of memory, a lost machine), nothing is left to
report its end: the run, its subflow runs and their task runs stay ``Running`` on the server forever. A
surviving worker marks the flow run it started ``Crashed``, but not the subflows inside it; with the
worker gone too, the parent itself stays ``Running`` and ``prefect flow-run retry`` refuses it (it retries
terminal runs only).

- ``crash_orphaned_children``: an ``on_running`` hook of the pipeline flow. When a run (re)starts, none of
  its children of this attempt exist yet, so every child flow run and task run still ``Running`` or
  ``Pending`` was left by an earlier attempt's dead process: they are marked ``Crashed``.
- ``recover``: the ``cpfs recover RUN_ID`` command's work: a run left ``Running`` by a dead process, and
  its running children, become ``Crashed``; then ``prefect flow-run retry RUN_ID`` accepts it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

UNFINISHED = [StateType.RUNNING, StateType.PENDING]


class RecoverError(Exception):
    """The run cannot be recovered as asked; the message says why."""


@dataclass
class Recovered:
    """What ``recover`` changed: ids of the runs now ``Crashed``."""

    flow_runs: list[str] = field(default_factory=list)
    task_runs: list[str] = field(default_factory=list)


def _crash_children(client, flow_run_id: UUID, message: str, out: Recovered) -> None:  # noqa: ANN001
    """Mark the unfinished task runs and child flow runs of ``flow_run_id`` Crashed, depth first."""
    children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]),
        state=dict(type=FlowRunFilterStateType(any_=UNFINISHED))))
    for child in children:
        _crash_children(client, child.id, message, out)
        client.set_flow_run_state(child.id, Crashed(message=message), force=True)
        out.flow_runs.append(str(child.id))
    tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
        flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]), state=dict(type=TaskRunFilterStateType(any_=UNFINISHED))))
    for t in tasks:
        client.set_task_run_state(t.id, Crashed(message=message), force=True)
        out.task_runs.append(str(t.id))


def crash_orphaned_children(flow, flow_run, state) -> None:  # noqa: ANN001 - Prefect's hook signature
    """``on_running`` hook: children of an earlier attempt of this run still unfinished are orphans."""
    from prefect.logging import get_logger

    out = Recovered()
    with get_client(sync_client=True) as client:
        _crash_children(client, flow_run.id, f"orphaned: flow run {flow_run.id} was restarted after its "
                        "process died", out)
    if out.flow_runs or out.task_runs:
        get_logger("cpfs.recovery").warning(
            "marked %d flow run(s) and %d task run(s) of an earlier attempt Crashed (their process had died)",
            len(out.flow_runs), len(out.task_runs))


def _local_process_alive(infrastructure_pid: str | None) -> int | None:
    """The PID of a process on this machine that still runs the flow, from Prefect's ``host:pid`` record."""
    if not infrastructure_pid or ":" not in infrastructure_pid:
        return None
    host, _, pid = infrastructure_pid.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, owned by someone else
    return int(pid)


def recover(flow_run_id: str, *, force: bool = False) -> tuple[str, Recovered]:
    """Mark a flow run left ``Running`` (or ``Pending``) by a dead process ``Crashed``, with its unfinished
    child flow runs and task runs; a finished run keeps its state and only its unfinished children change.
    Returns the run's state name before, and what changed.

    Raises ``RecoverError`` when the id is not a flow run of this server, or when Prefect records a process
    on this machine that is still alive and runs it (``force`` overrides: the caller knows it is hung).
    """
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        raise RecoverError(f"{flow_run_id!r} is not a flow run id (a UUID, as `cpfs run` prints)") from None
    out = Recovered()
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except Exception as e:  # noqa: BLE001 - ObjectNotFound, or the server is unreachable
            raise RecoverError(f"flow run {flow_run_id} not found on {client.api_url}: {e}") from None
        before = run.state.type if run.state else None
        if before in UNFINISHED:
            pid = _local_process_alive(run.infrastructure_pid)
            if pid is not None and not force:
                raise RecoverError(f"flow run {flow_run_id} is still run by process {pid} on this machine; "
                                   "stop it first (or pass --force if it is hung)")
        message = f"marked Crashed by `cpfs recover {flow_run_id}`: the process running it had died"
        _crash_children(client, run_id, message, out)
        if before in UNFINISHED:
            client.set_flow_run_state(run_id, Crashed(message=message), force=True)
            out.flow_runs.insert(0, str(run_id))
    return (before.value if before else "unknown"), out
