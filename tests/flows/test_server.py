"""``flows.server_process``: a real ``prefect server`` on loopback (SQLite, and PostgreSQL when installed), its
errors, and the foreground ``serve`` of ``cpfs server``."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.server_process import ServerError, free_port, redact_url, start_server, stop_process_group
from tests.flows.conftest import REPO, api_of, wait_until

# Spawns process groups and tears them down: one xdist worker runs every such test, one after the other.
pytestmark = pytest.mark.xdist_group("process-groups")


def test_session_server_answers_and_keeps_its_database_in_its_home(real_prefect_server):
    assert real_prefect_server.url.startswith("http://127.0.0.1:") and real_prefect_server.url.endswith("/api")
    assert real_prefect_server.healthy()
    assert (real_prefect_server.home / "prefect.db").is_file()


def test_a_taken_port_is_an_error_naming_the_address(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ServerError, match=f"127.0.0.1:{port}.*in use"):
            start_server(port, tmp_path / "home", timeout_s=120)
        assert time.monotonic() - t0 < 100  # reported when the server exits, not at the timeout


def test_redact_url_hides_only_the_password():
    assert redact_url("postgresql+asyncpg://cpfs:s3cret@db.lan:5432/prefect") == "postgresql+asyncpg://cpfs:***@db.lan:5432/prefect"
    assert redact_url("postgresql+asyncpg://cpfs@db.lan/prefect") == "postgresql+asyncpg://cpfs@db.lan/prefect"
    assert redact_url("sqlite+aiosqlite:////tmp/prefect.db") == "sqlite+aiosqlite:////tmp/prefect.db"


def test_stop_process_group_ends_the_children_too():
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    child = int(proc.stdout.readline())
    stop_process_group(proc, timeout_s=10)
    assert proc.poll() is not None
    wait_until(lambda: not _alive(child), 10, f"child {child} of the stopped group to exit", every_s=0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------------------ PostgreSQL


def _postgres_bin() -> Path | None:
    """The newest Debian-packaged PostgreSQL >= 14 server programs, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    found = [p for p in found if int(Path(p).parts[-3]) >= 14]
    return Path(found[-1]).parent if found else None


def _as_owner(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port with a database ``prefect`` that has
    ``pg_trgm``; yields its SQLAlchemy URL for Prefect (``postgresql+asyncpg://``)."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server >= 14 not installed (/usr/lib/postgresql/*/bin/initdb); "
                    "apt-get install postgresql")
    psql = shutil.which("psql") or str(bindir / "psql")
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the packaged 'postgres' user
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to own a PostgreSQL cluster")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without `runuser` to start PostgreSQL as another user")
    data = Path(tempfile.mkdtemp(prefix="cpfs-test-pg-"))  # outside pytest's root-only tmp folders
    if user:
        shutil.chown(data, user, user)
    port = free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    started = False
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data / "db"), "-U", "prefect", "-A", "trust",
                                  "-E", "UTF8", "--no-sync"], user), **run)
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "db" / "server.log"),
                                  "-w", "-t", "60", "-o",
                                  f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off", "start"], user), **run)
        started = True
        base = [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "-v", "ON_ERROR_STOP=1", "-At"]
        subprocess.run([*base, "-d", "postgres", "-c", "CREATE DATABASE prefect"], **run)
        ext = subprocess.run([*base, "-d", "prefect", "-c", "CREATE EXTENSION IF NOT EXISTS pg_trgm"],
                             capture_output=True, text=True, timeout=60)
        if ext.returncode != 0:
            pytest.skip(f"PostgreSQL at {bindir} lacks the pg_trgm extension (postgresql-contrib): {ext.stderr.strip()}")
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    except subprocess.CalledProcessError as e:
        pytest.fail(f"could not set up PostgreSQL with {e.cmd[:3]}...: {e.stdout}\n{e.stderr}")
    finally:
        if started:
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"], user),
                           capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def _psql(url: str, sql: str) -> str:
    where = url.split("@", 1)[1]  # 127.0.0.1:PORT/prefect
    hostport, db = where.split("/", 1)
    host, port = hostport.split(":")
    r = subprocess.run([shutil.which("psql") or "psql", "-h", host, "-p", port, "-U", "prefect", "-d", db, "-At",
                        "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True, text=True, timeout=60)
    return r.stdout


@pytest.mark.slow
def test_serve_on_postgresql_records_a_flow_run_and_stops_on_ctrl_c(postgres_url, tmp_path):
    from prefect import flow

    from flows.server_process import ServerHandle

    port = free_port()
    home = tmp_path / "home"
    log = tmp_path / "serve.log"
    env = {**os.environ, "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres_url, "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    code = f"from flows.server_process import serve; raise SystemExit(serve('127.0.0.1', {port}, home=__import__('pathlib').Path({str(home)!r}), ui=False))"
    with open(log, "wb") as out:
        # SIGINT at its default, as in a terminal (see _start_cpfs_server): run from a background shell
        # without job control, the child would inherit SIGINT ignored and the Ctrl+C below would do nothing.
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_sigint)
    try:
        def ready() -> bool:
            return "Press Ctrl+C to stop." in log.read_text(errors="replace")

        def alive() -> None:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with code {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")

        wait_until(ready, 300, f"`serve` on port {port} to report it is ready", check=alive)
        text = log.read_text()
        url = f"http://127.0.0.1:{port}/api"
        assert f"export PREFECT_API_URL={url}" in text
        assert f"database: {postgres_url}" in text
        assert not (home / "prefect.db").exists()  # the database is PostgreSQL, not SQLite in the home

        @flow(name="cpfs-postgres-probe")
        def probe(x: int) -> int:
            return x + 1

        handle = ServerHandle(url=url, process=proc, home=home, log=log)
        with api_of(handle):
            state = probe(41, return_state=True)
        assert state.is_completed() and state.result() == 42
        rows = _psql(postgres_url, "SELECT f.name, r.state_type, r.id FROM flow_run r JOIN flow f ON f.id = r.flow_id")
        assert f"cpfs-postgres-probe|COMPLETED|{state.state_details.flow_run_id}" in rows.splitlines(), rows

        os.kill(proc.pid, signal.SIGINT)  # Ctrl+C on the foreground command
        proc.wait(timeout=180)  # a loaded 2-core machine took over 60 s to stop
        assert not handle.healthy(timeout_s=2)
    finally:
        stop_process_group(proc, timeout_s=15)


# ------------------------------------------------------------------------------- `cpfs server` itself


CHROMIUM = Path("/usr/bin/chromium")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_cpfs_server(tmp_path: Path, port: int, *extra: str) -> tuple[subprocess.Popen, Path]:
    """``cpfs server --port PORT`` as a user starts it (the console script), its home in ``tmp_path``;
    returns once it printed that it is ready."""
    exe = shutil.which("cpfs", path=str(Path(sys.executable).parent))
    assert exe, "the cpfs console script is not installed in this environment"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    for name in ("PREFECT_API_URL", "PREFECT_SERVER_UI_API_URL", "PREFECT_UI_API_URL"):
        env.pop(name, None)
    log = tmp_path / "cpfs-server.log"
    with open(log, "wb") as out:
        # SIGINT at its default, as in a terminal: a parent started in the background by a shell without job
        # control ignores SIGINT, the child inherits that, and the Ctrl+C this test sends would do nothing.
        proc = subprocess.Popen([exe, "server", "--port", str(port), *extra], env=env, cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_default_sigint)

    def alive() -> None:
        if proc.poll() is not None:
            pytest.fail(f"cpfs server exited with code {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")

    try:
        wait_until(lambda: "Press Ctrl+C to stop." in log.read_text(errors="replace"), 300,
                   f"`cpfs server --port {port}` to report it is ready", every_s=0.5, check=alive)
    except BaseException:
        _end_tree(proc)
        raise
    return proc, log


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _end_tree(proc: subprocess.Popen) -> None:
    """Clean-up of a test that failed: end the wrapper's group and every descendant's group."""
    for pid in _tree(proc.pid):
        with __import__("contextlib").suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    stop_process_group(proc, timeout_s=10)


def test_sigterm_to_cpfs_server_stops_the_prefect_server_and_everything_it_started(tmp_path):
    port = free_port()
    proc, log = _start_cpfs_server(tmp_path, port, "--no-ui")
    try:
        descendants = _tree(proc.pid)
        assert descendants, "cpfs server started no Prefect server process"
        assert urllib_ok(f"http://127.0.0.1:{port}/api/health")
        os.kill(proc.pid, signal.SIGTERM)  # what `kill`, systemd and docker send
        assert proc.wait(timeout=180) == 0, log.read_text(errors="replace")[-3000:]
        wait_until(lambda: not any(_alive(p) for p in descendants), 30,
                   f"the Prefect server processes {descendants} to exit after SIGTERM to cpfs server", every_s=0.2)
        assert not urllib_ok(f"http://127.0.0.1:{port}/api/health")
        assert "SIGTERM: stopping the Prefect server" in log.read_text()
    finally:
        _end_tree(proc)


def urllib_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback http
            return r.status == 200
    except OSError:
        return False


def test_the_dashboard_on_a_non_default_port_reaches_its_api_in_a_real_browser(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium; `make system-deps` does it in CI)")
    import json
    import urllib.request

    port = free_port()
    assert port != 4200
    proc, _ = _start_cpfs_server(tmp_path, port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as r:  # noqa: S310
            assert json.loads(r.read())["api_url"] == f"http://127.0.0.1:{port}/api"
        base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
        dom = subprocess.run([*base, "--virtual-time-budget=20000", "--dump-dom", f"http://127.0.0.1:{port}/dashboard"],
                             capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        assert "<div" in page and len(page) > 2000, page[-2000:]  # the app rendered
        assert "Can't connect" not in page and "Can&#39;t connect" not in page, page[-3000:]
        assert "Dashboard" in page, page[-3000:]
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=180) == 0
    finally:
        _end_tree(proc)
