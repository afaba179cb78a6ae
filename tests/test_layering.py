"""The library never imports Prefect: `cpfs/` and `storage/` stay usable without an orchestrator."""

from __future__ import annotations

import subprocess
import sys


def test_library_does_not_import_prefect():
    code = ("import sys, cpfs.ingest, cpfs.train, cpfs.data, cpfs.distributed_train, cpfs.pipeline, "
            "cpfs.evaluation.run, cpfs.flow.torch_tvl1, storage; "
            "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
