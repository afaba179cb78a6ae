"""`cpfs upgrade`: a store written before motion statistics existed (format 1) is brought to format 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from flows.cli import app
from storage import VideoStore
from tests.cpfs.training.test_data import make_store


def test_upgrade_adds_motion_statistics_and_is_idempotent(tmp_path: Path) -> None:
    cfg = make_store(tmp_path / "s.zarr", n_videos=2)
    store = VideoStore.open(cfg, create=False)
    expected = {v: store.read_motion(v) for v in ("vid0", "vid1")}
    for v in expected:
        shutil.rmtree(Path(cfg.path) / "videos" / v / "motion")
    store.set_format_version(1)
    runner = CliRunner()
    first = runner.invoke(app, ["upgrade", "--store", cfg.path])
    assert first.exit_code == 0, first.output
    assert "format 1 -> 2; motion statistics added to 2 video(s)" in first.output
    for v, m in expected.items():
        np.testing.assert_allclose(store.read_motion(v), m, atol=1e-3)
    again = runner.invoke(app, ["upgrade", "--store", cfg.path])
    assert again.exit_code == 0 and "added to 0 video(s)" in again.output
    missing = runner.invoke(app, ["upgrade", "--store", str(tmp_path / "nope.zarr")])
    assert missing.exit_code == 2 and "--store" in missing.output
