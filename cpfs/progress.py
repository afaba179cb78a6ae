"""Progress a person can see, and logs that stay quiet.

One context manager for every long stage (ingest, training, evaluation)::

    from cpfs.progress import progress_bar

    with progress_bar(total, "ingest", unit="pair") as bar:
        for ...:
            bar.update(n=1, loss=0.25)          # keyword arguments become the postfix
            bar.set_description("ingest clip")  # replaces the description

- On a terminal (``sys.stdout.isatty()``): a tqdm bar with count, rate and ETA, and the postfix.
- Not a terminal (a log file, CI, a Prefect worker): no bar. One plain line at most every ``interval``
  seconds (30 s by default) and one at the end, written to stderr::

      ingest: 120/480 pair (25.0%), 4.01 pair/s, ETA 0:01:29, loss=0.25

The clock is injectable so the line cadence is tested without sleeping.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["ProgressBar", "progress_bar", "format_duration"]

LOG_INTERVAL_S = 30.0  # seconds between two plain progress lines when stdout is not a terminal


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for a duration in seconds; ``?`` when it is unknown (no rate yet)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _format_postfix(postfix: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_format_value(v)}" for k, v in postfix.items())


class ProgressBar:
    """The object ``progress_bar`` yields: ``update(n=1, **postfix)`` and ``set_description(text)``.

    In terminal mode it drives a tqdm bar; otherwise it writes a plain line at most every ``interval``
    seconds of ``clock`` and one more on ``close()``.
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", initial: int = 0,
                 tty: bool, interval: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 stream: TextIO | None = None) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.initial = initial
        self.n = initial
        self.postfix: dict[str, Any] = {}
        self.interval = interval
        self._clock = clock
        self._stream = stream
        self._start = clock()
        self._last_line = self._start
        self._closed = False
        self._tqdm = None
        if tty:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)

    # --- the two calls a stage makes ---------------------------------------------------------------------
    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` units; keyword arguments replace the shown postfix (``loss=0.25``)."""
        self.n += n
        if postfix:
            self.postfix = dict(postfix)
        if self._tqdm is not None:
            if postfix:
                self._tqdm.set_postfix({k: _format_value(v) for k, v in postfix.items()}, refresh=False)
            self._tqdm.update(n)
            return
        now = self._clock()
        if now - self._last_line >= self.interval:
            self._emit(now)

    def set_description(self, text: str) -> None:
        """Replace the description (the stage or item being worked on)."""
        self.desc = text
        if self._tqdm is not None:
            self._tqdm.set_description(text, refresh=False)

    # --- reporting ---------------------------------------------------------------------------------------
    def rate(self, now: float | None = None) -> float:
        """Units per second since the bar was opened (units done before ``initial`` not counted)."""
        elapsed = (self._clock() if now is None else now) - self._start
        done = self.n - self.initial
        return done / elapsed if elapsed > 0 and done > 0 else float("nan")

    def line(self, now: float | None = None) -> str:
        """The plain progress line: ``desc: done/total unit (pct), rate, ETA, postfix``."""
        now = self._clock() if now is None else now
        rate = self.rate(now)
        rate_text = f"{rate:.3g} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s"
        if self.total:
            head = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100.0 * self.n / self.total:.1f}%)"
            eta = (self.total - self.n) / rate if math.isfinite(rate) and rate > 0 else float("nan")
            parts = [head, rate_text, f"ETA {format_duration(eta)}"]
        else:
            parts = [f"{self.desc}: {self.n} {self.unit}", rate_text]
        parts.append(f"elapsed {format_duration(now - self._start)}")
        if self.postfix:
            parts.append(_format_postfix(self.postfix))
        return ", ".join(parts)

    def _emit(self, now: float) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        print(self.line(now), file=stream, flush=True)
        self._last_line = now

    def close(self) -> None:
        """Close the tqdm bar, or write the final plain line (once)."""
        if self._closed:
            return
        self._closed = True
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            self._emit(self._clock())


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout (pytest capture, daemons)
        return False


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "it", initial: int = 0, *,
                 tty: bool | None = None, interval: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None) -> Iterator[ProgressBar]:
    """A progress bar on a terminal, one plain line every ``interval`` seconds otherwise.

    ``total``: units expected (None: unknown, no percentage or ETA); ``desc``: what is being done;
    ``unit``: the unit's name (``pair``, ``step``); ``initial``: units already done (a resumed run).
    Keyword-only, for tests and callers with their own idea: ``tty`` forces the mode (default: whether
    stdout is a terminal), ``interval`` the seconds between plain lines, ``clock`` the time source,
    ``stream`` where plain lines go (default stderr).
    """
    bar = ProgressBar(total, desc, unit=unit, initial=initial,
                      tty=_stdout_is_terminal() if tty is None else tty,
                      interval=interval, clock=clock, stream=stream)
    try:
        yield bar
    finally:
        bar.close()
