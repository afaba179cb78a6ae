"""cpfs.progress: a tqdm bar on a terminal, one plain line every N seconds elsewhere (clock injected)."""

from __future__ import annotations

import io

import pytest

from cpfs.progress import format_duration, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_plain_mode_writes_one_line_per_interval_and_one_at_the_end():
    clock, out = FakeClock(), io.StringIO()
    with progress_bar(100, "ingest", unit="pair", tty=False, interval=30.0, clock=clock, stream=out) as bar:
        for _ in range(10):  # 10 updates, 5 s apart: 50 s -> one line at 30 s
            clock.t += 5.0
            bar.update(n=2, loss=0.123456)
        assert out.getvalue().count("\n") == 1
        clock.t += 5.0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, last = lines
    # at 30 s: 12 pairs done, 0.4 pair/s, 88 left -> 220 s
    assert first.startswith("ingest: 12/100 pair (12.0%)")
    assert "0.4 pair/s" in first and "ETA 0:03:40" in first and "loss=0.1235" in first
    # the end: 20 pairs in 55 s
    assert last.startswith("ingest: 20/100 pair (20.0%)")
    assert "elapsed 0:00:55" in last


def test_plain_mode_counts_rate_from_initial_and_takes_descriptions():
    clock, out = FakeClock(), io.StringIO()
    with progress_bar(1000, "train", unit="step", initial=500, tty=False, clock=clock, stream=out) as bar:
        clock.t += 10.0
        bar.update(n=100, **{"images/s": 12.5})
        bar.set_description("train ce")
    (line,) = out.getvalue().splitlines()
    assert line.startswith("train ce: 600/1000 step (60.0%), 10 step/s, ETA 0:00:40")
    assert "images/s=12.5" in line


def test_plain_mode_without_total_or_progress_says_unknown():
    clock, out = FakeClock(), io.StringIO()
    with progress_bar(None, "scan", tty=False, clock=clock, stream=out):
        pass
    assert out.getvalue().strip() == "scan: 0 it, ? it/s, elapsed 0:00:00"


def test_plain_line_written_even_when_the_block_raises():
    clock, out = FakeClock(), io.StringIO()
    with pytest.raises(KeyError):
        with progress_bar(10, "eval", tty=False, clock=clock, stream=out) as bar:
            bar.update()
            raise KeyError("boom")
    assert out.getvalue().startswith("eval: 1/10 it")


def test_terminal_mode_drives_tqdm(capsys):
    with progress_bar(4, "train", unit="step", initial=1, tty=True) as bar:
        bar.update(n=2, loss=0.5)
        bar.set_description("train mse")
        assert bar._tqdm is not None and bar._tqdm.n == 3
        assert bar._tqdm.postfix == "loss=0.5"
    err = capsys.readouterr().err
    assert "train mse" in err and "3/4" in err and "step/s" in err


def test_mode_follows_stdout_when_not_forced(capsys):
    # under pytest stdout is captured, not a terminal: no tqdm bar
    with progress_bar(3, "x") as bar:
        assert bar._tqdm is None


def test_format_duration():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(float("nan")) == "?"
