"""``cpfs.training.launch``: where a run folder stands, the torchrun command line, a finished run's summary."""

from __future__ import annotations

import json

import pytest

from cpfs.config import TrainStageConfig
from cpfs.training.launch import run_summary, start_step, torchrun_command


def test_torchrun_command_carries_the_whole_stage(tmp_path):
    stage = TrainStageConfig.model_validate({"store": {"path": str(tmp_path / "s.zarr"), "shard_frames": 8},
                                             "run_dir": str(tmp_path / "run"), "nproc_per_node": 3,
                                             "train": {"steps": 7}})
    cmd = torchrun_command(stage)
    assert "--nproc_per_node=3" in cmd and cmd[cmd.index("-m") + 1] == "cpfs.training.distributed_train"
    assert json.loads(cmd[cmd.index("--config") + 1])["steps"] == 7
    assert cmd[cmd.index("--store") + 1] == str(tmp_path / "s.zarr")
    assert json.loads(cmd[cmd.index("--store-config") + 1])["shard_frames"] == 8
    assert cmd[cmd.index("--run-dir") + 1] == str(tmp_path / "run") and cmd[-1] == "--resume"
    assert "--resume" not in torchrun_command(stage.model_copy(update={"resume": False}))


def test_an_empty_run_folder_starts_at_zero_and_has_no_summary(tmp_path):
    stage = TrainStageConfig(run_dir=str(tmp_path / "run"))
    assert start_step(stage) == 0
    with pytest.raises(FileNotFoundError, match="wrote no checkpoint"):
        run_summary(stage, 1.0, 0)
