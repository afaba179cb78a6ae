"""PipelineConfig: one store for every stage; preflight names the wrong parameter; stage fingerprints."""

from __future__ import annotations

import os

import pytest

from cpfs.config import IngestConfig, PipelineConfig, TrainStageConfig
from cpfs.pipeline import PreflightError, ingest_fingerprint, preflight, train_fingerprint


def test_one_store_for_every_stage():
    c = PipelineConfig.model_validate({"ingest": {"store": {"path": "/data/s.zarr"}}, "train": {"run_dir": "/r/x"}})
    assert c.train.store.path == c.evaluate.store.path == "/data/s.zarr"
    assert c.evaluate.checkpoint == "/r/x" and c.evaluate.out == "/r/x/eval"


def test_preflight_names_the_parameter(tmp_path):
    with pytest.raises(PreflightError, match=r"ingest.inputs\[0\]"):
        preflight(PipelineConfig.model_validate({"ingest": {"inputs": [str(tmp_path / "missing")]}}))
    with pytest.raises(PreflightError, match="ingest.flow.backend"):
        preflight(PipelineConfig.model_validate({"ingest": {"flow": {"backend": "opencv-cuda-farneback"}}}))
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root ignores permissions)")
        with pytest.raises(PreflightError, match="ingest.store.path"):
            preflight(PipelineConfig.model_validate({"ingest": {"store": {"path": str(locked / "s.zarr")}}}))
    finally:
        os.chmod(locked, 0o700)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(PreflightError, match="train.run_dir"):
        preflight(PipelineConfig.model_validate({"train": {"run_dir": str(a_file / "run")},
                                                 "ingest": {"store": {"path": str(tmp_path / "s.zarr")}}}))


def test_fingerprints_follow_content(tmp_path):
    v = tmp_path / "v.mp4"
    v.write_bytes(b"abc")
    cfg = IngestConfig()
    k1 = ingest_fingerprint(cfg, [str(v)])
    assert ingest_fingerprint(cfg.model_copy(update={"n_workers": 7}), [str(v)]) == k1  # placement only
    assert ingest_fingerprint(cfg.model_copy(update={"shards_per_task": 9}), [str(v)]) != k1
    v.write_bytes(b"abcd")
    assert ingest_fingerprint(cfg, [str(v)]) != k1
    t = TrainStageConfig()
    assert train_fingerprint(t, "v1") != train_fingerprint(t, "v2")
    assert train_fingerprint(t, "v1") == train_fingerprint(t.model_copy(update={"resume": False}), "v1")


def test_versioned_run_folder_per_store_version():
    t = TrainStageConfig.model_validate({"run_dir": "runs/nightly", "version_runs": True})
    a, b = t.for_store_version("v1"), t.for_store_version("v2")
    assert a.run_dir.endswith("store-v1") and b.run_dir.endswith("store-v2")
    assert a.for_store_version("v1") == a  # resolving twice does not nest folders
    plain = TrainStageConfig()
    assert plain.for_store_version("v1") is plain


def test_a_different_store_for_a_later_stage_is_an_error_not_replaced():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"train.store \(/other.zarr\) differs from ingest.store \(/data/s.zarr\)"):
        PipelineConfig.model_validate({"ingest": {"store": {"path": "/data/s.zarr"}},
                                       "train": {"store": {"path": "/other.zarr"}}})
    with pytest.raises(ValidationError, match=r"evaluate.store .* differs"):
        PipelineConfig.model_validate({"evaluate": {"checkpoint": "r", "store": {"path": "/other.zarr"}}})
    same = PipelineConfig.model_validate({"ingest": {"store": {"path": "/data/s.zarr"}},
                                          "train": {"store": {"path": "/data/s.zarr"}}})
    assert same.train.store.path == "/data/s.zarr"
    assert PipelineConfig.model_validate(same.model_dump(mode="json", by_alias=True)) == same  # a round trip is no conflict


def test_preflight_tries_to_write_instead_of_trusting_permission_bits(tmp_path):
    # os.access says root may write in /proc; creating a file there fails for everyone.
    with pytest.raises(PreflightError, match=r"ingest.store.path: /proc/forbidden.zarr is not writable") as e:
        preflight(PipelineConfig.model_validate({"ingest": {"store": {"path": "/proc/forbidden.zarr"}}}))
    assert e.value.parameter == "ingest.store.path" and "cannot create a file in /proc" in e.value.reason
    before = sorted(tmp_path.iterdir())
    preflight(PipelineConfig.model_validate({"ingest": {"store": {"path": str(tmp_path / "new" / "s.zarr")}},
                                             "train": {"run_dir": str(tmp_path / "run")}}))
    assert sorted(tmp_path.iterdir()) == before  # the probe files are gone, no folder was created
