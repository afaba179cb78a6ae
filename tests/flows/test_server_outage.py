"""Issue 21: the Prefect API server goes away during a run and comes back. The run keeps working: every API
request that finds the server gone is retried with back-off (``PREFECT_CLIENT_MAX_RETRIES``, set by the ``cpfs``
command and by prefect.yaml's work pool), and the run ends Completed on the restarted server.
``bench/server_outage.py`` measures the same with the real ingest and training commands and longer outages."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.server_process import free_port, start_server
from tests.flows.conftest import REPO, api_of, wait_until

# Spawns process groups and tears them down: one xdist worker runs every such test, one after the other.
pytestmark = pytest.mark.xdist_group("process-groups")


def _pool_retries() -> str:
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return doc["definitions"]["work_pools"]["process"]["job_variables"]["env"]["PREFECT_CLIENT_MAX_RETRIES"]


def test_the_cli_and_the_work_pool_give_flow_runs_the_same_retry_budget() -> None:
    import subprocess

    code = "import flows.cli, os; print(os.environ['PREFECT_CLIENT_MAX_RETRIES'])"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_CLIENT_MAX_RETRIES"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == _pool_retries() == "8", out.stderr


def test_a_flow_rides_out_the_server_going_away_and_completes_when_it_is_back(tmp_path: Path, processes) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    port, home = free_port(), tmp_path / "server-home"
    server = start_server(port, home, scheduler=False, timeout_s=300)
    go = tmp_path / "go"
    env = {**os.environ, "PREFECT_API_URL": server.url, "PREFECT_HOME": str(tmp_path / "client-home"),
           "PREFECT_CLIENT_MAX_RETRIES": _pool_retries(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    try:
        proc = processes.start("probe", [sys.executable, "tests/flows/outage_flows.py", str(go)], env, cwd=REPO)
        wait_until(lambda: Path(str(go) + ".running").exists(), 240, "the probe flow to run", every_s=0.2,
                   check=processes.check_alive)
        server.stop()  # the whole server process group, as a crash or a restart would
        assert not server.healthy(timeout_s=1)
        time.sleep(8)  # requests meanwhile fail to connect and are retried (2 s, then 4 s, then 8 s later)
        assert proc.poll() is None, processes.log("probe")  # still working
        server = start_server(port, home, scheduler=False, timeout_s=300)  # same port, same database
        go.touch()
        assert proc.wait(timeout=240) == 0, processes.log("probe")
        with api_of(server), get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["outage-probe"])))
        assert [r.state.type.value for r in runs] == ["COMPLETED"], processes.log("probe")
        assert int(processes.log("probe").rsplit("ticks:", 1)[1].split()[0]) > 0
    finally:
        server.stop()
