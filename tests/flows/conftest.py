"""Real processes for the scale-out tests: one ``prefect server`` for the session (SQLite, loopback),
and helpers that start Prefect and Dask command-line programs in their own process groups, log them to
files, and end them (the whole group) however the test ends."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from flows.server_process import ServerHandle, log_tail, prefect_command, start_server, stop_process_group

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def real_prefect_server(tmp_path_factory) -> Iterator[ServerHandle]:
    """A ``prefect server start`` child on a free loopback port, its database in a temporary
    PREFECT_HOME. The scheduler service is off so a scheduled deployment never starts runs of its own
    during a test."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    handle = start_server(None, home, scheduler=False, timeout_s=300)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def client_env(real_prefect_server, tmp_path) -> dict[str, str]:
    """Environment of a Prefect client child process (CLI, worker, Dask worker): pointed at the session
    server, its own PREFECT_HOME, no analytics."""
    env = dict(os.environ)
    home = tmp_path / "prefect-client-home"
    home.mkdir()
    env.update({"PREFECT_API_URL": real_prefect_server.url, "PREFECT_HOME": str(home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1"})
    return env


@contextlib.contextmanager
def api_of(server: ServerHandle) -> Iterator[None]:
    """Point this process's Prefect client (flows run here, ``get_client``) at ``server``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.url}):
        yield


class Processes:
    """Child programs started by one test, each in its own process group with its own log file."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, cmd: list[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append((name, proc, log))
        return proc

    def log(self, name: str) -> str:
        return log_tail(self.logs / f"{name}.log")

    def check_alive(self) -> None:
        """Fail naming the program that died and the end of its log."""
        for name, proc, log in self.started:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with code {proc.returncode}; log {log}:\n{log_tail(log)}")

    def check_alive_except(self, *names: str) -> Callable[[], None]:
        """``check_alive`` for every program but ``names`` (those are expected to exit)."""
        def check() -> None:
            for name, proc, log in self.started:
                if name not in names and proc.poll() is not None:
                    pytest.fail(f"{name} exited with code {proc.returncode}; log {log}:\n{log_tail(log)}")
        return check

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.started):
            stop_process_group(proc, timeout_s=15)


@pytest.fixture
def processes(tmp_path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop_all()


def run_cli(args: list[str], env: Mapping[str, str], cwd: Path = REPO, timeout_s: float = 240) -> subprocess.CompletedProcess:
    """Run a short-lived ``prefect`` command to completion; fail with its output when it fails."""
    r = subprocess.run(prefect_command(*args), env=dict(env), cwd=cwd, capture_output=True, text=True,
                       timeout=timeout_s, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        pytest.fail(f"prefect {' '.join(args)} failed with code {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def dask_command(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "dask"
    if not exe.exists():
        found = shutil.which("dask")
        if found is None:
            pytest.skip("the `dask` command (distributed) is not installed in this environment")
        exe = Path(found)
    return [str(exe), *args]


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, every_s: float = 1.0,
               check: Callable[[], None] | None = None) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout_s``. ``check`` runs each round
    (e.g. fail early when a child process died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if check is not None:
            check()
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
