"""A parent flow with a task that runs a subflow, like the pipeline's stages: the process of the recovery
tests (tests/flows/test_recovery.py). The innermost task waits until a file exists, so a test can kill the
process while everything is Running, and a retry after the file is created completes."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, task

from flows.recovery import crash_orphaned_children


@task(name="wait-for-file")
def wait_for_file(path: str) -> str:
    while not Path(path).exists():
        time.sleep(0.2)
    return Path(path).read_text()


@flow(name="recovery-child")
def child(path: str) -> str:
    return wait_for_file(path)


@task(name="stage")
def stage(path: str) -> str:
    return child(path)


@flow(name="recovery-parent", on_running=[crash_orphaned_children])
def parent(path: str) -> str:
    return stage(path)


if __name__ == "__main__":
    import sys

    parent(sys.argv[1])
