"""cpfs.locks: one holder at a time across processes, a clear message naming the holder, and a lock that dies
with its holder (kill -9 included) so no run is left waiting on a crashed one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cpfs.locks import LockBusy, LockError, exclusive

REPO = Path(__file__).resolve().parents[2]

# A child that takes the lock, says so on stdout, and holds it until killed.
_HOLDER = textwrap.dedent("""
    import sys, time
    from cpfs.locks import exclusive
    with exclusive(sys.argv[1], "the test's thing"):
        print("held", flush=True)
        time.sleep(600)
""")


def _holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "held"  # blocks until the child holds the lock
    return proc


def test_a_free_lock_is_taken_at_once_and_given_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.lock"
    with exclusive(path, "x") as waited:
        assert waited is False and path.parent.is_dir()
        with pytest.raises(LockBusy, match=r"^x is held by another run \(pid \d+ on "):
            with exclusive(path, "x", wait=False):  # another open file of this process is another holder
                pass
    with exclusive(path, "x", wait=False) as waited:  # released on leaving the block
        assert waited is False


def test_another_process_holding_it_is_named_and_waited_for_until_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    proc = _holder(path)
    try:
        with pytest.raises(LockBusy, match=rf"the thing is held by another run \(pid {proc.pid} on "):
            with exclusive(path, "the thing", wait=False):
                pass
        messages: list[str] = []
        with pytest.raises(LockError, match=rf"\(pid {proc.pid} on .*\); gave up after 0.3 s"):
            with exclusive(path, "the thing", on_wait=messages.append, timeout_s=0.3, poll_s=0.05):
                pass
        assert len(messages) == 1 and messages[0].startswith(f"waiting for another run that holds the thing (pid {proc.pid} on ")
        os.kill(proc.pid, signal.SIGKILL)  # a crashed holder: the kernel releases its lock with the process
        proc.wait(timeout=30)
        with exclusive(path, "the thing", wait=False) as waited:
            assert waited is False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_a_lock_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LockError, match=r"file/x.lock: cannot make the lock for the thing"):
        with exclusive(blocker / "x.lock", "the thing"):
            pass
