"""The pipeline's pre-flight looks inside an existing store: a damaged video it cannot repair, or an input
stored with other settings, stops the run before any work, naming the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpfs.ingest.steps import ingest_video
from cpfs.config import PipelineConfig
from cpfs.pipeline import PreflightError, preflight
from cpfs.records import VideoSource
from storage import layout
from tests.cpfs.ingest.test_ingest_integrity import _cfg, two_shots  # noqa: F401 - fixture

__all__ = ["two_shots"]


def _pipeline(tmp_path: Path, inputs: list[Path], **ingest_kw) -> PipelineConfig:
    ing = _cfg(tmp_path / "s.zarr", [str(p) for p in inputs], **ingest_kw).model_dump(mode="json", by_alias=True)
    return PipelineConfig.model_validate({"ingest": ing, "train": {"run_dir": str(tmp_path / "run")}})


def test_preflight_checks_the_stores_videos(tmp_path, two_shots) -> None:
    other = tmp_path / "elsewhere.mp4"
    other.write_bytes(two_shots.read_bytes()[:-1] + b"\0")  # other content, another id (decodes the same)
    assert not preflight(_pipeline(tmp_path, [two_shots])).store_ready  # no store yet: nothing to trust
    vid = ingest_video(VideoSource(str(two_shots), "file"), _cfg(tmp_path / "s.zarr")).video_id
    assert preflight(_pipeline(tmp_path, [two_shots])).store_ready  # intact, same settings
    with pytest.raises(PreflightError, match=r"ingest.store.path: .*--size: stored 64, requested 32"):
        preflight(_pipeline(tmp_path, [two_shots], decode={"short_side": 32}))
    (tmp_path / "s.zarr" / layout.array_path(vid, "frames") / "c/0/0/0/0").unlink()
    # Damaged, but its source is an input: this run's ingest repairs it (a cached ingest is not trusted).
    assert not preflight(_pipeline(tmp_path, [two_shots])).store_ready
    with pytest.raises(PreflightError) as info:
        preflight(_pipeline(tmp_path, [other]))
    msg = str(info.value)
    assert info.value.parameter == "ingest.store.path"
    assert vid in msg and str(two_shots) in msg and "frames frames [0, 4)" in msg and "cpfs ingest SOURCE" in msg
