"""Failure rehearsal for tests that run the pipeline in a child process (``tests/flows/test_pipeline.py``).

A test puts this folder on the child's ``PYTHONPATH`` and names a file in ``CPFS_TEST_FAULT_FILE``; Python
imports this module at start-up, and while that file exists training raises ``InjectedFailure`` on the
batch number written in it (1 when empty). Remove the file, retry the run: training resumes. No code of the
project knows about this: it wraps ``cpfs.training.train.train`` before anything imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

FAULT_FILE = os.environ.get("CPFS_TEST_FAULT_FILE")


class InjectedFailure(RuntimeError):
    """Raised on purpose to rehearse a failed training stage."""


def _install(fault_file: Path) -> None:
    import cpfs.training.train

    real_train = cpfs.training.train.train

    def train(*args, progress=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        def failing_progress(step: int, total: int, metrics: dict) -> None:
            if fault_file.exists():
                text = fault_file.read_text().strip()
                if step >= (int(text) if text else 1):
                    raise InjectedFailure(f"injected failure at batch {step} ({fault_file} exists)")
            if progress is not None:
                progress(step, total, metrics)

        return real_train(*args, progress=failing_progress, **kwargs)

    cpfs.training.train.train = train


if FAULT_FILE:
    _install(Path(FAULT_FILE))
