"""The training task: one training per run folder at a time (issue 21). A second training into a folder that
another one is training waits for it, then finds the run finished: checkpoints never interleave."""

from __future__ import annotations

import threading
from pathlib import Path

from cpfs.config import TrainStageConfig
from cpfs.training.run_folder import RunFolder
from cpfs.training.train import train
from tests.cpfs.training.test_data import make_store
from tests.helpers import set_when_called
from tests.cpfs.training.test_train import tiny_config


def test_a_second_training_into_one_run_folder_waits_and_finds_the_run_finished(prefect_server, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    from tasks.train import train_model

    store = make_store(tmp_path / "s.zarr", n_videos=2)
    stage = TrainStageConfig(store=store, run_dir=str(tmp_path / "run"), train=tiny_config(steps=4, checkpoint_every=2))
    run = RunFolder(stage.run_dir)
    holding, task_waits, trained = threading.Event(), threading.Event(), []
    real_lock = RunFolder.lock

    def other_run():  # the first training, holding the folder's lock from start to end
        with real_lock(run):
            holding.set()
            assert task_waits.wait(timeout=300)
            trained.append(train(stage.train, stage.store, run.path))

    thread = threading.Thread(target=other_run)
    thread.start()
    assert holding.wait(timeout=60)
    # the task is about to take (and, while the other run holds it, wait for) the lock
    set_when_called(monkeypatch, RunFolder, "lock", task_waits)
    try:
        summary = train_model(stage)
    finally:
        task_waits.set()
        thread.join(timeout=300)
    assert len(trained) == 1 and trained[0].steps == 4
    # the task trained nothing itself: it found the other run's finished folder
    assert (summary.steps, summary.resumed_from, summary.seconds) == (4, 4, 0.0)
    assert [r["step"] for r in run.read_metrics()] == sorted({r["step"] for r in run.read_metrics()})
    assert [s for s, _ in run.checkpoint_files()] == [2, 4]
