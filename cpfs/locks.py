"""Exclusive locks between processes (and machines sharing a POSIX file system) for work that two runs must
not do at once: writing one video into a store (``VideoStore.writer_lock``) and training into one run folder
(``RunFolder.lock``).

A lock is an OS lock (``flock`` through the ``filelock`` package) on a small file: the kernel releases it
when its holder exits in any way, kill -9 included, so a crashed run never leaves a lock to clean up by hand.
Beside the lock file, ``<name>.owner`` says who holds it (pid, host, since when) for the waiting run's message;
it is advisory text, never trusted for exclusion. A second run *waits* for the first and then finds its work
done (or resumes it, when the first died). Object storage has no such lock: stores at a URL are not
coordinated between runs (``VideoStore.writer_lock`` returns None and the ingest flow says so).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from cpfs.errors import CPFSError


class LockError(CPFSError):
    """A lock could not be taken: its folder cannot be written, or the wait ran out. Names the lock."""


class LockBusy(LockError):
    """Another run holds the lock (raised instead of waiting when the caller asked not to wait)."""


def _owner_file(path: Path) -> Path:
    return path.with_name(path.name + ".owner")


def holder(path: str | Path) -> str:
    """Who holds (or last held) the lock at ``path``, in words ("pid 123 on host, since 12:00:01"); "" if unknown."""
    try:
        doc = json.loads(_owner_file(Path(path)).read_text())
        return f"pid {doc['pid']} on {doc['host']}, since {doc['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


@contextmanager
def exclusive(path: str | Path, what: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None,
              timeout_s: float | None = None, poll_s: float = 0.5) -> Iterator[bool]:
    """Hold the exclusive lock at ``path`` for the ``with`` block; yields True when another process held it
    first (this one waited for it), False when it was free.

    Args:
        what: the locked thing in words, for messages ("video abc in store s").
        wait: False raises ``LockBusy`` at once when another process holds the lock.
        on_wait: called once with a message when the lock is busy, before waiting.
        timeout_s: give up after this long with ``LockError`` (None: wait as long as the holder runs).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LockError(f"{path}: cannot make the lock for {what} ({type(e).__name__}: {e})") from e
    # No soft fallback: a soft lock (a file that exists) outlives a killed holder and would block every later run.
    lock = filelock.FileLock(str(path), thread_local=False, fallback_to_soft=False)
    waited = False
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            who = holder(path)
            if not wait:
                raise LockBusy(f"{what} is held by another run" + (f" ({who})" if who else "")) from None
            waited = True
            if on_wait is not None:
                on_wait(f"waiting for another run that holds {what}" + (f" ({who})" if who else ""))
            try:
                lock.acquire(timeout=-1 if timeout_s is None else timeout_s, poll_interval=poll_s)
            except filelock.Timeout as e:
                who = holder(path)
                raise LockError(f"{what} is held by another run{f' ({who})' if who else ''}; "
                                f"gave up after {timeout_s:g} s") from e
    except OSError as e:
        raise LockError(f"{path}: cannot take the lock for {what} ({type(e).__name__}: {e})") from e
    try:
        try:
            _owner_file(path).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        except OSError:
            pass  # the owner note is for messages only
        yield waited
    finally:
        lock.release()
