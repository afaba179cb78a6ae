"""A local Prefect server process for the pipeline: start it, wait until it answers, stop it.

Not a flow: this module manages a child process (``prefect server start``) for ``cpfs server`` and the tests;
it lives in ``flows/`` because it serves the orchestration, and is named for what it is.

``start_server`` runs ``prefect server start --host 127.0.0.1 --port P`` as a child process in its own
process group, with its own ``PREFECT_HOME`` (where the embedded SQLite database ``prefect.db`` lives
unless ``database_url`` points at PostgreSQL), and waits for ``GET /api/health`` to answer ``true``.
``ServerHandle.stop`` ends the whole process group. ``serve`` is the foreground ``cpfs server``
command: it starts the server, prints where the UI is and how to point ``PREFECT_API_URL`` at it, and
runs until Ctrl+C, SIGTERM or SIGHUP, each of which stops the server's whole process group (the server
runs in a session of its own, so no signal reaches it unless the wrapper passes it on).

A fresh database runs every migration on start-up, which took 46 s on a busy 2-core machine, so the
default wait is long (300 s); an early exit of the server is reported at once, with its log's tail.

This module talks to the server over HTTP and launches Prefect as a separate program, so importing it
does not import Prefect.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cpfs.errors import CPFSError

LOOPBACK = "127.0.0.1"


class ServerError(CPFSError):
    """The Prefect server did not start (or stop) as asked; the message says which server and why."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it; another program may still
    take it before the caller binds it, which ``start_server`` handles by retrying)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def prefect_command(*args: str) -> list[str]:
    """The ``prefect`` command line of this interpreter's environment (no reliance on ``PATH``)."""
    return [sys.executable, "-m", "prefect", *args]


def stop_process_group(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """End a child started with ``start_new_session=True`` and everything it started: SIGTERM to its
    process group, then SIGKILL after ``timeout_s``. A process that already exited is left alone."""
    if process.poll() is not None:
        _kill_group(process.pid, signal.SIGKILL)  # orphans of a dead leader, if any
        return
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)
    _kill_group(process.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(path: Path | None, n_chars: int = 3000) -> str:
    """The end of a log file, or a note that there is none."""
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace")
    return text[-n_chars:]


@dataclass
class ServerHandle:
    """A running ``prefect server`` child process."""

    url: str  # the API URL, e.g. http://127.0.0.1:4200/api: the value for PREFECT_API_URL
    process: subprocess.Popen
    home: Path  # the server's PREFECT_HOME
    log: Path | None  # where its output goes (None: this process's own stdout/stderr)
    env: dict[str, str] = field(repr=False, default_factory=dict)  # the environment it was started with

    @property
    def ui_url(self) -> str:
        """The dashboard's address (served only when started with ``ui=True``)."""
        return self.url.removesuffix("/api")

    def healthy(self, timeout_s: float = 5.0) -> bool:
        return _health(self.url, timeout_s)

    def client_env(self) -> dict[str, str]:
        """Environment entries that point a Prefect client (CLI, worker, flow) at this server."""
        return {"PREFECT_API_URL": self.url}

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server and every process it started (its process group)."""
        stop_process_group(self.process, timeout_s)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _health(api_url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as r:  # noqa: S310 - http only
            return r.status == 200 and json.loads(r.read() or b"null") is True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def display_host(host: str) -> str:
    """The address a browser on this machine uses for a server listening on ``host`` (a wildcard
    address such as 0.0.0.0 is not one to connect to)."""
    return LOOPBACK if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - a display address only


def ui_api_url(host: str, port: int) -> str:
    """Where the dashboard's JavaScript calls the API. A user's own ``PREFECT_SERVER_UI_API_URL`` (or its
    older name ``PREFECT_UI_API_URL``) wins: behind a proxy, or for browsers on other machines, only the
    user knows the address they reach this machine by."""
    for name in ("PREFECT_SERVER_UI_API_URL", "PREFECT_UI_API_URL"):
        if os.environ.get(name):
            return os.environ[name]
    h = display_host(host)
    return f"http://{'[' + h + ']' if ':' in h else h}:{port}/api"


def server_env(home: Path, *, ui: bool, database_url: str | None, scheduler: bool, host: str = LOOPBACK,
               port: int = 4200, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``prefect server`` child: this process's, minus any client API URL (the
    server is not a client of another server), plus the server settings asked for.

    The server's own address goes in as settings too (``PREFECT_SERVER_API_HOST``/``_PORT``) and the
    dashboard is told where the API is (``PREFECT_SERVER_UI_API_URL``): the UI otherwise derives it from
    the default port 4200 whatever ``--port`` says, and shows "Can't connect to Server API"."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_UI_API_URL")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_UI_API_URL": ui_api_url(host, port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true" if scheduler else "false",
    })
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    else:
        env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)  # the embedded SQLite in PREFECT_HOME
    env.update(extra or {})
    return env


def start_server(port: int | None, home: Path, *, host: str = LOOPBACK, ui: bool = False,
                 database_url: str | None = None, scheduler: bool = True, timeout_s: float = 300.0,
                 log: Path | None | bool = True, extra_env: Mapping[str, str] | None = None) -> ServerHandle:
    """Start ``prefect server start --host HOST --port PORT`` and wait until ``/api/health`` answers.

    ``port`` None picks a free port (retried on a lost race). ``home`` becomes the server's
    ``PREFECT_HOME`` (created if missing). ``database_url``: a SQLAlchemy URL such as
    ``postgresql+asyncpg://user:pass@host:5432/prefect``; None uses SQLite in ``home``. ``scheduler``
    False turns off the service that creates runs of scheduled deployments. ``log``: True writes the
    server's output to ``home/server.log``, a path writes it there, None/False leaves it on this
    process's stdout/stderr. Raises ``ServerError`` naming the URL and the reason (early exit, with the
    log's tail; or no answer within ``timeout_s``).
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log" if log is True else (Path(log) if log else None)
    attempts = 3 if port is None else 1
    for attempt in range(attempts):
        p = port if port is not None else free_port(host)
        env = server_env(home, ui=ui, database_url=database_url, scheduler=scheduler, host=host, port=p,
                         extra=extra_env)
        try:
            return _start_once(host, p, home, env, log_path, timeout_s)
        except _PortTaken:
            if attempt == attempts - 1:
                raise ServerError(f"prefect server on {host}:{p}: port already in use") from None
    raise AssertionError("unreachable")


class _PortTaken(Exception):
    pass


def _start_once(host: str, port: int, home: Path, env: dict[str, str], log_path: Path | None,
                timeout_s: float) -> ServerHandle:
    url = f"http://{host}:{port}/api"
    cmd = prefect_command("server", "start", "--host", host, "--port", str(port))
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        if out:
            out.close()
    handle = ServerHandle(url=url, process=proc, home=home, log=log_path, env=env)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_tail(log_path)
                if "already in use" in tail:
                    raise _PortTaken
                raise ServerError(f"prefect server at {url} exited with code {proc.returncode} before it "
                                  f"answered /api/health; log {log_path}:\n{tail}")
            if _health(url, timeout_s=5.0):
                return handle
            time.sleep(0.5)
        raise ServerError(f"prefect server at {url} did not answer /api/health within {timeout_s:.0f} s; "
                          f"log {log_path}:\n{log_tail(log_path)}")
    except BaseException:
        handle.stop()
        raise


class _Stop(Exception):
    """A termination signal arrived; ``serve`` stops the server and exits."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


# Signals that end ``cpfs server`` like Ctrl+C does: ``kill``, systemd and docker send SIGTERM, a closed
# terminal SIGHUP. The server runs in its own process group (so that stopping it reaches every process
# it started), so the terminal's signals never reach it: the wrapper must pass them on.
FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)


def serve(host: str = LOOPBACK, port: int = 4200, *, home: Path | None = None, ui: bool = True,
          database_url: str | None = None, timeout_s: float = 300.0) -> int:
    """Run a Prefect server in the foreground until interrupted (the ``cpfs server`` command).

    ``home`` None keeps Prefect's own ``PREFECT_HOME`` (``~/.prefect``), so runs and deployments persist
    across restarts. ``database_url`` None uses ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` when set in
    the environment (a team's PostgreSQL), else SQLite in ``home``. Ctrl+C, SIGTERM and SIGHUP stop the
    server and every process it started, then return 0; otherwise returns the server's exit code.
    """
    home = Path(home or os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    database_url = database_url or os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    previous = {sig: signal.signal(sig, _raise_stop) for sig in FORWARDED_SIGNALS}
    handle: ServerHandle | None = None
    try:
        print(f"Starting the Prefect server on {host}:{port} (PREFECT_HOME={home}, database: "
              f"{redact_url(database_url) if database_url else home / 'prefect.db'}) ...", flush=True)
        handle = start_server(port, home, host=host, ui=ui, database_url=database_url, timeout_s=timeout_s,
                              log=None)
        api = f"http://{display_host(host)}:{port}/api"
        print(f"\nPrefect UI:   {api.removesuffix('/api')}" if ui else "\nPrefect UI:   disabled", flush=True)
        print(f"Prefect API:  {api}", flush=True)
        print("Point the pipeline (cpfs, prefect deploy, prefect worker) at it in each shell:\n"
              f"    export PREFECT_API_URL={api}\n"
              "or once per Prefect profile:\n"
              f"    prefect config set PREFECT_API_URL={api}\n"
              "Press Ctrl+C to stop.", flush=True)
        if host not in (LOOPBACK, "localhost", "::1"):
            print(f"warning: listening on {host}: anyone who can reach this port can use the API; set "
                  "PREFECT_SERVER_API_AUTH_STRING=user:password on the server and PREFECT_API_AUTH_STRING on "
                  "clients, or keep it behind a firewall. Browsers on other machines need "
                  f"PREFECT_SERVER_UI_API_URL=http://<this machine's address>:{port}/api (now "
                  f"{handle.env['PREFECT_SERVER_UI_API_URL']}).", file=sys.stderr, flush=True)
        return handle.process.wait()
    except (KeyboardInterrupt, _Stop) as e:
        why = "Ctrl+C" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"{why}: stopping the Prefect server ...", file=sys.stderr, flush=True)
        return 0
    finally:
        # A second Ctrl+C or SIGTERM while stopping must not leave the server behind half-stopped: ignore
        # them until the process group is gone (``stop`` ends with SIGKILL if the server hangs).
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if handle is not None:
                handle.stop()
        finally:
            signal.signal(signal.SIGINT, interrupt)
            for sig, old in previous.items():
                signal.signal(sig, old)


def redact_url(url: str) -> str:
    """A database URL with its password (if any) replaced by ``***``, for printing."""
    scheme, sep, rest = url.partition("://")
    cred, at, where = rest.rpartition("@")
    if not at or ":" not in cred:
        return url
    user = cred.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{where}"
