"""What a user gets when the Prefect API server goes away during a run (issue 21 item 4). Not run by CI.

Starts a ``prefect server`` (the one ``cpfs server`` runs: ``flows.server_process.start_server``, SQLite in a
temporary PREFECT_HOME, a free loopback port), starts the job as a client of it, stops the server (its whole
process group, as a crash or a restart would) ``--after`` seconds after the job's flow run is Running, for
``--outage`` seconds, starts
it again on the same port and database, and reports: the job's exit status and time, the last lines of its
output, and the state the server holds for its flow runs afterwards.

Jobs: ``ingest`` (``cpfs ingest`` of the sample video bikes.mp4 at short side 160, DIS flow; its ranges report to
the server throughout) and ``train`` (``cpfs train`` of the ``demo`` preset for ``--steps`` steps on the store
the ingest made; run ``ingest`` first, or with ``--job both`` in that order).

    .venv/bin/python bench/server_outage.py --job both --after 2 --after-train 10 --outage 45 --out runs/outage

A command that *starts* while the server is away fails at once ("Failed to reach API"): Prefect retries a lost
connection only after its first one succeeded, so a wrong address fails fast.

The client's retry budget is ``PREFECT_CLIENT_MAX_RETRIES`` as the ``cpfs`` command sets it (see
``flows.cli``): each API request that finds the server gone is retried with exponential back-off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from flows.server_process import free_port, prefect_command, start_server

REPO = Path(__file__).resolve().parents[1]


def _flow_runs(url: str) -> list[dict]:
    req = urllib.request.Request(f"{url}/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback http
        return [{"name": f["name"], "flow": f.get("flow_id"), "state": f["state"]["type"],
                 "message": (f["state"].get("message") or "")[:200]} for f in json.loads(r.read())]


def run_job(cmd: list[str], env: dict[str, str], home: Path, port: int, server, after: float,
            outage: float, log: Path):  # noqa: ANN001, ANN201
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        known = {f["name"] for f in _flow_runs(server.url)}
        # The outage starts ``after`` seconds after the job's flow run is Running on the server: a command that
        # starts while the server is away fails at once (see above), which is not what this measures.
        while proc.poll() is None and not any(f["state"] == "RUNNING" and f["name"] not in known
                                              for f in _flow_runs(server.url)):
            time.sleep(0.2)
        time.sleep(after)
        stopped_at = time.monotonic() - t0
        still_running = proc.poll() is None
        server.stop()
        time.sleep(outage)
        server = start_server(port, home, scheduler=False, timeout_s=300)
        back_at = time.monotonic() - t0
        rc = proc.wait()
    seconds = time.monotonic() - t0
    return server, {"cmd": " ".join(cmd), "exit": rc, "seconds": round(seconds, 1),
                    "server_stopped_at_s": round(stopped_at, 1), "job_running_when_stopped": still_running,
                    "server_back_at_s": round(back_at, 1), "tail": log.read_text()[-1500:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--job", choices=["ingest", "train", "both"], default="both")
    p.add_argument("--after", type=float, default=2.0,
                   help="seconds after the ingest's flow run is Running when the server stops")
    p.add_argument("--after-train", type=float, default=10.0,
                   help="seconds after the training's flow run is Running when the server stops")
    p.add_argument("--outage", type=float, default=45.0, help="seconds the server stays away")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", default="runs/outage")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="outage-server-"))
    port = free_port()
    server = start_server(port, home, scheduler=False, timeout_s=300)
    env = {**os.environ, "PREFECT_API_URL": server.url, "PREFECT_HOME": str(out / "client-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    cpfs = str(Path(sys.executable).with_name("cpfs"))
    from cpfs.ingest.discovery import sample_videos

    bikes = next(v for v in sample_videos() if v.name == "bikes.mp4")
    jobs = {"ingest": [cpfs, "ingest", str(bikes), "--store", str(out / "store.zarr"), "--size", "160",
                       "--backend", "opencv-dis"],
            "train": [cpfs, "train", "--store", str(out / "store.zarr"), "--run-dir", str(out / "run"),
                      "--preset", "demo", "--steps", str(a.steps)]}
    results = {}
    try:
        for name in (["ingest", "train"] if a.job == "both" else [a.job]):
            after = a.after if name == "ingest" else a.after_train
            server, results[name] = run_job(jobs[name], env, home, port, server, after, a.outage,
                                            out / f"{name}.log")
        results["flow_runs"] = _flow_runs(server.url)
    finally:
        server.stop()
    results["settings"] = {"after_s": a.after, "after_train_s": a.after_train, "outage_s": a.outage, "steps": a.steps,
                           "PREFECT_CLIENT_MAX_RETRIES": os.environ.get("PREFECT_CLIENT_MAX_RETRIES", "(cpfs default)")}
    (out / "outage.json").write_text(json.dumps(results, indent=2))
    for name in ("ingest", "train"):
        if name in results:
            r = results[name]
            print(f"{name}: exit {r['exit']} after {r['seconds']} s (server stopped at {r['server_stopped_at_s']} s, "
                  f"job running then: {r['job_running_when_stopped']}; back at {r['server_back_at_s']} s)")
    for f in results["flow_runs"]:
        print(f"  flow run {f['name']}: {f['state']} {f['message']}")


if __name__ == "__main__":
    main()
