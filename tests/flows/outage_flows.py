"""A flow that keeps talking to the Prefect API (a task run every 0.2 s) until a file exists: the process of the
API-server outage test (tests/flows/test_server_outage.py). It writes ``<go>.running`` once it is Running."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, task


@task(name="tick")
def tick(i: int) -> int:
    return i


@flow(name="outage-probe")
def probe(go: str) -> int:
    Path(go + ".running").write_text("running")
    i = 0
    while not Path(go).exists():
        tick(i)
        i += 1
        time.sleep(0.2)
    return i


if __name__ == "__main__":
    import sys

    print("ticks:", probe(sys.argv[1]), flush=True)
