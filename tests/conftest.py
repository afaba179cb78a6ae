"""Shared test set-up: Prefect kept out of the user's home, one temporary Prefect server per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports Prefect: its settings are read at import time.
_PREFECT_HOME = tempfile.mkdtemp(prefix="cpfs-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API server (SQLite) for every test that runs a flow in-process; a longer
    start-up timeout than Prefect's default, which a fresh database on this machine once missed."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def sample_videos() -> list[Path]:
    from cpfs.ingest.discovery import sample_videos as _sv

    return _sv()


@pytest.fixture(scope="session")
def middlebury() -> Path:
    p = SHARED_DATA / "middlebury"
    if not p.is_dir():
        pytest.skip(f"Middlebury data not found at {p} (see shared/data/README.md)")
    return p


@pytest.fixture(scope="session")
def davis() -> Path:
    p = SHARED_DATA / "davis"
    if not p.is_dir():
        pytest.skip(f"DAVIS data not found at {p} (see shared/data/README.md)")
    return p
