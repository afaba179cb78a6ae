"""The Prefect flow ``ingest`` and the ``cpfs ingest`` command, against a real temporary Prefect server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cpfs.config import IngestConfig
from storage import VideoStore
from tests.helpers import cut_clip, h264_with_damage, set_when_called, truncated_copy


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_videos) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    bikes = next(p for p in sample_videos if p.name == "bikes.mp4")
    carphone = next(p for p in sample_videos if p.name == "carphone_pristine.mp4")
    good = cut_clip(bikes, d / "dossier à vidéos" / "bikes clip é.mp4", 12)
    good2 = cut_clip(carphone, d / "carphone.mp4", 10)
    empty = d / "empty.mp4"
    empty.write_bytes(b"")
    text = d / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    trunc = truncated_copy(good2, d / "truncated.mp4", 0.4)
    # A dropped folder (issue 21): a video with damaged bytes beside a symbolic link loop and a dangling link.
    drop = d / "drop"
    h264_with_damage(d / "originals" / "clean.mp4", drop / "damaged.mp4", seed=1)
    (drop / "loop a.mp4").symlink_to("loop b.mp4")
    (drop / "loop b.mp4").symlink_to("loop a.mp4")
    (drop / "dangling.mp4").symlink_to(d / "moved away.mp4")
    return {"good": good, "good2": good2, "empty": empty, "text": text, "trunc": trunc,
            "missing": d / "no such video.mp4", "drop": drop}


def _cfg(tmp_path: Path, inputs: list[Path]) -> IngestConfig:
    return IngestConfig.model_validate({
        "inputs": [str(p) for p in inputs], "store": {"path": str(tmp_path / "store.zarr"), "shard_frames": 4},
        "decode": {"short_side": 48}, "flow": {"backend": "opencv-dis"}, "n_workers": 2})


def test_bad_videos_fail_alone_good_ones_are_stored(prefect_server, tmp_path, inputs):
    from flows.ingest import ingest

    cfg = _cfg(tmp_path, list(inputs.values()))
    state = ingest(cfg, return_state=True)
    assert state.is_failed()
    for key in ("empty", "text", "trunc", "missing"):
        assert str(inputs[key]) in state.message, (key, state.message)
    # each unreadable entry of the folder is its own failure, and the folder's video is stored...
    for entry in ("loop a.mp4", "loop b.mp4", "dangling.mp4"):
        assert f"{inputs['drop'] / entry}: unreadable" in state.message, state.message
    damaged = str(inputs["drop"] / "damaged.mp4")
    result = {r.source: r for r in state.result(raise_on_failure=False).results}[damaged]
    # ...but not as clean: the summary says where ffmpeg reported decode errors
    assert result.status == "stored" and result.note.startswith("stored with 1 decode error in frames ~"), result
    store = VideoStore.open(cfg.store, create=False)
    index = store.read_index()
    assert sorted(e.source_path for e in index.entries) == sorted([str(inputs["good"]), str(inputs["good2"]), damaged])
    assert len(store.complete_ids()) == 3
    assert store.decode_errors(result.video_id).count == 1


def test_second_run_is_a_noop_and_keeps_the_store(prefect_server, tmp_path, inputs):
    from flows.ingest import ingest

    cfg = _cfg(tmp_path, [inputs["good"]])
    first = ingest(cfg)
    assert [r.status for r in first.results] == ["stored"]
    again = ingest(cfg)
    assert [r.status for r in again.results] == ["skipped"]
    assert again.index_version == first.index_version


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("cpfs", path=str(Path(sys.executable).parent))
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["--size", "0"], "short_side"),
    (["--backend", "warp-drive"], "backend"),
    (["--step", "0"], "step"),
    (["--backend", "opencv-cuda-tvl1"], "CUDA"),
])
def test_cli_rejects_bad_parameters_naming_them(tmp_path, inputs, args, needle):
    r = _cli("ingest", str(inputs["good"]), "--store", str(tmp_path / "s.zarr"), *args, cwd=tmp_path)
    assert r.returncode != 0
    assert needle in r.stderr + r.stdout
    assert not (tmp_path / "s.zarr" / "videos").exists() or not any((tmp_path / "s.zarr" / "videos").iterdir())


def test_cli_help_explains_every_option(tmp_path):
    r = _cli("ingest", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for opt in ("--store", "--backend", "--size", "--step", "--max-frames", "--dask-address"):
        assert opt in r.stdout


def test_watched_folder_missing_or_empty_is_nothing_to_do(prefect_server, tmp_path):
    from flows.ingest import ingest

    empty = tmp_path / "watch-empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "watch-missing"):
        cfg = IngestConfig.model_validate({"inputs": [str(folder)], "watch": True,
                                           "store": {"path": str(tmp_path / "store.zarr")}})
        summary = ingest(cfg)
        assert summary.results == ()
    unwatched = IngestConfig.model_validate({"inputs": [str(empty)], "store": {"path": str(tmp_path / "s2.zarr")}})
    assert ingest(unwatched, return_state=True).is_failed()


def test_the_local_cluster_announces_no_dashboard_that_nobody_serves(tmp_path) -> None:
    from cpfs.config import IngestConfig, StoreConfig
    from flows.ingest import task_runner_for

    runner = task_runner_for(IngestConfig(store=StoreConfig(path=str(tmp_path / "s.zarr")), n_workers=1))
    said: list[str] = []
    runner.logger = type("Log", (), {"__getattr__": lambda self, level: lambda msg, *a, **k: said.append(str(msg))})()
    with runner:
        assert runner.client is not None
    assert any("Creating a new Dask cluster" in m for m in said)  # the runner did log through this logger
    assert not any("dashboard" in m.lower() for m in said), said


def _store_as_another_run(source, cfg: IngestConfig, video_id: str):
    """Store one video as another run would, its writer lock already held by the caller: the library's steps,
    not ``ingest_video`` (which would take the lock again)."""
    from cpfs.ingest import steps as lib

    plan = lib.prepare_video(source, cfg, video_id)
    for r in plan.ranges:
        lib.process_range(plan, r, cfg)
    return lib.finalize_video(plan, cfg)


def _ingest_beside(other_run, holding, flow_waits, busy_id: str, cfg: IngestConfig, monkeypatch):
    """Run the ingest flow while ``other_run`` (a thread) holds ``busy_id``'s writer lock: it starts once the
    thread holds the lock, and ``flow_waits`` is set when the flow asks to wait for that video (or at the end)."""
    import threading

    from flows.ingest import ingest

    thread = threading.Thread(target=other_run)
    thread.start()
    assert holding.wait(timeout=60)
    set_when_called(monkeypatch, VideoStore, "writer_lock", flow_waits,
                    lambda video_id, wait=True, on_wait=None: wait and video_id == busy_id)
    try:
        return ingest(cfg)
    finally:
        flow_waits.set()
        thread.join(timeout=300)


def test_a_video_another_run_is_writing_is_waited_for_and_skipped_as_stored_by_it(prefect_server, tmp_path, inputs,
                                                                                  monkeypatch):
    """Issue 21: two runs ingesting one video at once. "The other run" (a thread here) holds the video's writer
    lock and stores it; the flow stores its free video meanwhile, waits for the busy one, and reports it
    skipped, stored by another run: one of the two runs did the work."""
    import threading

    from cpfs.ingest.discovery import content_id
    from cpfs.records import VideoSource

    cfg = _cfg(tmp_path, [inputs["good"], inputs["good2"]])
    VideoStore.open(cfg.store, create=True)
    busy_id = content_id(VideoSource(str(inputs["good"]), "file"))
    holding, flow_waits, done = threading.Event(), threading.Event(), []
    real_lock = VideoStore.writer_lock

    def other_run():
        store = VideoStore.open(cfg.store, create=False)
        with real_lock(store, busy_id):
            holding.set()
            assert flow_waits.wait(timeout=300)
            done.append(_store_as_another_run(VideoSource(str(inputs["good"]), "file"), cfg, busy_id))

    # the flow found the video busy (it only waits for videos it could not take)
    summary = _ingest_beside(other_run, holding, flow_waits, busy_id, cfg, monkeypatch)
    assert [r.status for r in done] == ["stored"]
    by_source = {r.source: r for r in summary.results}
    assert by_source[str(inputs["good2"])].status == "stored"
    busy = by_source[str(inputs["good"])]
    assert (busy.status, busy.video_id, busy.note) == ("skipped", busy_id, "stored by another run")
    assert sorted(VideoStore.open(cfg.store, create=False).complete_ids()) == sorted(
        [busy_id, by_source[str(inputs["good2"])].video_id])


def test_two_runs_with_crossed_videos_never_wait_for_each_other(prefect_server, tmp_path, inputs, monkeypatch):
    """Two runs ingesting the same two videos, each having taken a different one first: the flow gives back the
    locks of the videos it stored before it waits for the other run's video, so the other run, which then
    wants this run's video, gets it (held while waiting, the two would wait for each other for ever)."""
    import threading

    from cpfs.ingest.discovery import content_id
    from cpfs.locks import exclusive
    from cpfs.records import VideoSource
    from storage import layout

    cfg = _cfg(tmp_path, [inputs["good"], inputs["good2"]])
    store = VideoStore.open(cfg.store, create=True)
    mine_id = content_id(VideoSource(str(inputs["good"]), "file"))  # free for the flow: it stores this one
    theirs = VideoSource(str(inputs["good2"]), "file")
    theirs_id = content_id(theirs)  # the other run holds this one first
    holding, flow_waits, got_mine = threading.Event(), threading.Event(), []
    real_lock = VideoStore.writer_lock

    def other_run():
        with real_lock(store, theirs_id):
            holding.set()
            assert flow_waits.wait(timeout=300)
            # now this run wants the flow's video too (as a run that took them in the other order would)
            with exclusive(tmp_path / "store.zarr" / layout.LOCKS / f"{mine_id}.lock", "the flow's video",
                           timeout_s=60):
                got_mine.append(True)
                _store_as_another_run(theirs, cfg, theirs_id)

    summary = _ingest_beside(other_run, holding, flow_waits, theirs_id, cfg, monkeypatch)
    assert got_mine == [True]  # the other run was not left waiting for the flow's video
    by_source = {r.source: r for r in summary.results}
    assert by_source[str(inputs["good"])].status == "stored"
    assert (by_source[theirs.path].status, by_source[theirs.path].note) == ("skipped", "stored by another run")
