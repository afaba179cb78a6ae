"""The store knows what it wrote: finalize records every storage object of a video (size and digest), a
missing or damaged shard of a complete video fails loudly when its array is opened, and ``verify`` checks
every object. Tiny videos as in test_store (T=10, 16x24, shards of 4 frames)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cpfs.config import StoreConfig
from cpfs.errors import StoreError
from storage import VideoStore
from storage import integrity, layout
from tests.storage.test_store import S, T, cfg, ingest, make_record, store  # noqa: F401 - fixtures

__all__ = ["cfg", "store"]


def _object_file(cfg: StoreConfig, vid: str, array: str, key: str) -> Path:
    return Path(cfg.path) / layout.array_path(vid, array) / key


def _reopen(cfg: StoreConfig) -> VideoStore:
    return VideoStore.open(cfg, create=False)  # a fresh instance: nothing checked yet


def test_finalize_records_every_object_of_every_array(store: VideoStore, cfg: StoreConfig) -> None:
    ingest(store, make_record("v1"))
    attrs = store.video_attrs("v1")
    specs = layout.video_arrays(T, attrs["height"], attrs["width"], S)
    assert attrs["shard_counts"] == {name: len(layout.storage_objects(spec)) for name, spec in specs.items()}
    assert attrs["shard_counts"]["frames"] == 3 and attrs["shard_counts"]["flow"] == 3  # 10 frames, 9 pairs, S=4
    doc = json.loads((Path(cfg.path) / layout.manifest_path("v1") / "zarr.json").read_text())
    objects = doc["attributes"]["objects"]
    assert set(objects) == set(specs)
    for name, entries in objects.items():
        for key, size, digest in entries:
            path = _object_file(cfg, "v1", name, key)
            assert path.stat().st_size == size and len(digest) == 32
    report = _reopen(cfg).verify()
    assert report.ok and report.checked == ("v1",) and report.full
    assert report.n_objects == sum(attrs["shard_counts"].values())
    assert report.n_bytes == sum(size for entries in objects.values() for _, size, _ in entries)


def test_shards_of_fill_values_only_are_written_too(store: VideoStore, cfg: StoreConfig) -> None:
    """No cut at all (all False, the fill value) and all-zero flow still give stored objects: a missing
    object can never mean 'all fill values'."""
    rec = make_record("still")
    vid = rec.video_id
    ingest(store, rec, finalize=False)
    store.finalize(vid, np.zeros(T - 1, bool))
    for key in ("c/0", "c/1", "c/2"):
        assert _object_file(cfg, vid, "cut", key).is_file()
    assert _reopen(cfg).verify().ok


@pytest.mark.parametrize("array", ["flow", "frames", "pair_error", "cut"])
def test_a_missing_shard_fails_loudly_naming_the_video_and_range(store: VideoStore, cfg: StoreConfig, array: str) -> None:
    ingest(store, make_record("v1", path="/videos/source one.mp4"))
    key = "c/1/0/0/0" if array in ("flow", "frames") else "c/1"
    _object_file(cfg, "v1", array, key).unlink()
    s = _reopen(cfg)
    unit = "frames" if array == "frames" else "pairs"
    readers = {"frames": lambda: s.read_frames("v1", 0, 2), "flow": lambda: s.read_flow("v1", 0, 2),
               "pair_error": lambda: s.read_pair_error("v1"), "cut": lambda: s.read_cut("v1")}
    for read in (readers[array], lambda: s.open_dask("v1", array), lambda: integrity.open_checked(s, "v1", array)):
        with pytest.raises(StoreError) as info:
            read()
        msg = str(info.value)
        assert "'v1'" in msg and "/videos/source one.mp4" in msg and f"{array} {unit} [4, 8)" in msg, msg
        assert "missing" in msg and "cpfs verify" in msg
    report = s.verify(full=False)
    assert not report.ok and list(report.damaged) == ["v1"]
    (problem,) = report.damaged["v1"]
    assert (problem.array, problem.key, problem.start, problem.stop, problem.problem) == (array, key, 4, 8, "missing")
    other = "frames" if array != "frames" else "flow"
    assert integrity.open_checked(s, "v1", other).shape[0] in (T, T - 1)  # the intact arrays of the video stay readable


def test_cut_short_shard_fails_on_open_and_changed_bytes_fail_verify(store: VideoStore, cfg: StoreConfig) -> None:
    ingest(store, make_record("v1"))
    ingest(store, make_record("v2"), seed=1)
    short = _object_file(cfg, "v1", "frames", "c/2/0/0/0")
    short.write_bytes(short.read_bytes()[:-10])
    with pytest.raises(StoreError, match=r"frames frames \[8, 10\).*bytes \(manifest: \d+\)"):
        _reopen(cfg).frames("v1")
    flipped = _object_file(cfg, "v2", "flow", "c/0/0/0/0")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    cheap = _reopen(cfg).verify(full=False)  # presence and size only: the flipped byte is not seen
    assert list(cheap.damaged) == ["v1"]
    full = _reopen(cfg).verify()
    assert sorted(full.damaged) == ["v1", "v2"]
    assert [d.problem for d in full.damaged["v2"]] == ["contents differ from the manifest's digest"]
    assert _reopen(cfg).check_video("v2", full=True) == list(full.damaged["v2"])


def test_manifest_lost_is_damage_and_a_video_from_before_manifests_is_unverifiable(store: VideoStore, cfg: StoreConfig) -> None:
    ingest(store, make_record("v1"))
    ingest(store, make_record("old"), seed=1)
    ingest(store, make_record("busy"), seed=2, finalize=False)
    (Path(cfg.path) / layout.manifest_path("v1") / "zarr.json").unlink()
    with pytest.raises(StoreError, match="manifest: missing"):
        _reopen(cfg).flow("v1")
    # a video completed by an older version: no shard_counts in its completion record, no manifest
    group_doc = Path(cfg.path) / layout.video_path("old") / "zarr.json"
    doc = json.loads(group_doc.read_text())
    del doc["attributes"]["shard_counts"]
    group_doc.write_text(json.dumps(doc))
    (Path(cfg.path) / layout.manifest_path("old") / "zarr.json").unlink()
    s = _reopen(cfg)
    assert s.read_frames("old", 0, 1).shape[0] == 1  # nothing to check against: read as before
    report = s.verify()
    assert list(report.damaged) == ["v1"] and report.unverifiable == ("old",) and report.incomplete == ("busy",)
    with pytest.raises(StoreError, match="incomplete"):
        s.check_video("busy")
