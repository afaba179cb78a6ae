"""Videos named by id, file or folder name, path ending or glob (``cpfs.ingest.video_names``), and the pre-flight that
resolves held-out videos to ids before any stage runs (``cpfs.pipeline.check_train``, ``preflight``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpfs.config import StoreConfig, TrainStageConfig
from cpfs.pipeline import PreflightError, check_train
from cpfs.ingest.video_names import VideoNameError, display_names, resolve_videos, video_name

STORED = {"aaa111": "/data/a/clip.mp4", "bbb222": "/data/b/clip.mp4", "ccc333": "/data/davis/480p/soapbox",
          "ddd444": "/data/carphone_pristine.mp4"}


def test_an_id_a_name_a_path_ending_and_a_glob_name_videos():
    assert resolve_videos(["ddd444"], STORED) == ["ddd444"]
    assert resolve_videos(["carphone_pristine.mp4"], STORED) == ["ddd444"]
    assert resolve_videos(["soapbox", "soapbox/"], STORED) == ["ccc333"]  # a folder, named twice: once
    assert resolve_videos(["b/clip.mp4"], STORED) == ["bbb222"]  # more of the path tells two clip.mp4 apart
    assert resolve_videos(["/data/a/clip.mp4"], STORED) == ["aaa111"]
    assert resolve_videos(["*.mp4"], STORED) == ["aaa111", "bbb222", "ddd444"]  # a glob may name many
    assert resolve_videos(["*/480p/*", "carphone*"], STORED) == ["ccc333", "ddd444"]
    assert video_name("/data/davis/480p/soapbox/") == "soapbox"


def test_an_ambiguous_name_is_an_error_naming_both_videos():
    with pytest.raises(VideoNameError) as e:
        resolve_videos(["clip.mp4"], STORED)
    assert e.value.value == "clip.mp4"
    assert "ambiguous" in e.value.reason and "/data/a/clip.mp4 (aaa111)" in str(e.value)
    assert "/data/b/clip.mp4 (bbb222)" in str(e.value)


def test_an_unknown_name_and_an_empty_glob_list_what_is_known():
    with pytest.raises(VideoNameError, match=r"'nope.mp4' names no video .*known: carphone_pristine.mp4 \(ddd444\)"):
        resolve_videos(["nope.mp4"], STORED)
    with pytest.raises(VideoNameError, match=r"'\*.avi' matches no video; the store s holds: "):
        resolve_videos(["*.avi"], STORED, known_as="the store s holds")
    with pytest.raises(VideoNameError, match="known: no videos"):
        resolve_videos(["clip"], {})
    with pytest.raises(VideoNameError, match="names no video"):
        resolve_videos(["lip.mp4"], STORED)  # a path ending is whole path components, not any suffix


def test_inputs_not_stored_yet_are_hashed_only_when_named():
    hashed = []

    def identify(path: str) -> str:
        hashed.append(path)
        return {"/in/new.mp4": "eee555", "/in/old.mp4": "aaa111"}[path]

    inputs = ["/in/new.mp4", "/in/old.mp4"]
    assert resolve_videos(["soapbox"], STORED, inputs=inputs, identify=identify) == ["ccc333"]
    assert hashed == []  # a stored video named: no input read
    assert resolve_videos(["new.mp4"], STORED, inputs=inputs, identify=identify) == ["eee555"]
    assert hashed == ["/in/new.mp4"]
    # old.mp4 has the content of the stored a/clip.mp4: one video, not two
    assert resolve_videos(["*.mp4"], {"aaa111": "/data/a/clip.mp4"}, inputs=inputs, identify=identify) == \
        ["aaa111", "eee555"]
    assert resolve_videos(["eee555"], STORED, inputs=inputs, identify=identify) == ["eee555"]  # an input's id


@pytest.fixture
def store(tmp_path: Path) -> StoreConfig:
    from storage import VideoStore
    from tests.storage.test_store import ingest, make_record

    cfg = StoreConfig(path=str(tmp_path / "s.zarr"), shard_frames=4)
    vs = VideoStore.open(cfg, create=True)
    ingest(vs, make_record("f5d41eb5f1e1b22571c0", path="/videos/carphone_pristine.mp4"), seed=0)
    ingest(vs, make_record("0a0a0a0a0a0a0a0a0a0a", path="/videos/bikes.mp4"), seed=1)
    return cfg


def test_the_pre_flight_resolves_held_out_names_to_ids(store: StoreConfig, tmp_path: Path):
    stage = TrainStageConfig.model_validate({"store": store.model_dump(), "run_dir": str(tmp_path / "run"),
                                             "train": {"heldout_videos": ["carphone_pristine.mp4"]}})
    assert check_train(stage).train.heldout_videos == ["f5d41eb5f1e1b22571c0"]
    unknown = stage.model_copy(update={"train": stage.train.model_copy(update={"heldout_videos": ["x.mp4"]})})
    with pytest.raises(PreflightError) as e:
        check_train(unknown)
    assert e.value.parameter == "train.heldout_videos"
    assert e.value.reason == (f"'x.mp4' names no video (not an id, file or folder name); the store {store.path} "
                              "holds: bikes.mp4 (0a0a0a0a0a0a0a0a0a0a), carphone_pristine.mp4 (f5d41eb5f1e1b22571c0)")


def test_the_pipeline_pre_flight_knows_the_inputs_not_stored_yet(store: StoreConfig, tmp_path: Path):
    from cpfs.config import PipelineConfig
    from cpfs.pipeline import preflight

    (tmp_path / "new.mp4").write_bytes(b"not decoded: the check under test comes before the backend's")
    cfg = PipelineConfig.model_validate({
        "ingest": {"inputs": [str(tmp_path / "new.mp4")], "store": store.model_dump()},
        "train": {"run_dir": str(tmp_path / "run"), "train": {"heldout_videos": ["nope.mp4"]}}})
    with pytest.raises(PreflightError) as e:
        preflight(cfg)
    assert e.value.parameter == "train.train.heldout_videos"
    assert e.value.reason.endswith("and the inputs hold: bikes.mp4 (0a0a0a0a0a0a0a0a0a0a), carphone_pristine.mp4 "
                                   "(f5d41eb5f1e1b22571c0), new.mp4 (an input, not stored yet)")


def test_display_names_are_file_names_told_apart_by_id_where_shared() -> None:
    stored = {"f5d41eb5f1e1b22571c0": "/data/a/clip.mp4", "0a1b2c3d4e5f60718293": "/data/b/clip.mp4",
              "99887766554433221100": "/davis/480p/soapbox/", "00aa": ""}
    assert display_names(stored) == {"f5d41eb5f1e1b22571c0": "clip.mp4 (f5d41eb5)", "0a1b2c3d4e5f60718293": "clip.mp4 (0a1b2c3d)",
                                     "99887766554433221100": "soapbox", "00aa": "00aa"}
