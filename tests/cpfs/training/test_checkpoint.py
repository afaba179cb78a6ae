"""Checkpoints: the architecture record and its inverse, one read per load, pruning, errors naming the path.
(Atomic writes, resume and the architecture check under training are tested in ``test_train.py``.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from cpfs.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    architecture_config,
    describe_architecture,
    load_model,
    prune_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from cpfs.training.model import AlexNetConfig, CPFSModel, CPFSModelConfig
from cpfs.training.run_folder import RunFolder


def _tiny() -> CPFSModel:
    torch.manual_seed(0)
    return CPFSModel(CPFSModelConfig(trunk=AlexNetConfig(width=0.125), hypercolumn_layers=("conv3", "conv5"), embed_dim=8))


def _save(run: RunFolder, step: int, model: CPFSModel) -> Path:
    payload = {"format": CHECKPOINT_FORMAT, "step": step, "model": model.state_dict(), "config": {"seed": 3},
               "store_version": "v1", "architecture": describe_architecture(model)}
    return save_checkpoint(run.checkpoint(step), payload)


def test_architecture_record_round_trips() -> None:
    model = _tiny()
    arch = describe_architecture(model)
    assert architecture_config(arch, "x.pt") == model.config
    assert arch["shapes"]["trunk.conv1.conv.weight"] == list(model.trunk.conv1.conv.weight.shape)
    with pytest.raises(CheckpointError, match="x.pt: not a CPFSModel checkpoint"):
        architecture_config({**arch, "class": "ResNet"}, "x.pt")
    with pytest.raises(CheckpointError, match="x.pt: architecture record is incomplete"):
        architecture_config({k: v for k, v in arch.items() if k != "hidden"}, "x.pt")


def test_load_model_reads_the_file_once_and_hashes_those_bytes(tmp_path: Path, monkeypatch) -> None:
    model = _tiny()
    run = RunFolder(tmp_path / "run")
    path = _save(run, 5, model)
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    loaded, record = load_model(run.path)  # a run folder: its latest checkpoint
    assert len(loads) == 1
    assert record.path == path.resolve() and record.step == 5 and record.store_version == "v1"
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.train_config == {"seed": 3} and record.run == RunFolder(run.path.resolve())
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_mismatched_or_missing_checkpoint_is_named(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    model = _tiny()
    path = _save(run, 1, model)
    payload = torch.load(path, weights_only=True)
    payload["architecture"] = {**payload["architecture"], "embed_dim": 16}
    wrong = save_checkpoint(tmp_path / "wrong.pt", payload)
    with pytest.raises(CheckpointError, match=f"{wrong}: network .* does not fit this architecture; shape mismatches"):
        load_model(wrong)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'empty'}: training run folder holds no checkpoint"):
        (tmp_path / "empty").mkdir()
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="nothing.pt: checkpoint not found"):
        resolve_checkpoint(tmp_path / "nothing.pt")


def test_prune_keeps_the_latest_and_removes_stale_temporaries(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    model = _tiny()
    for step in (1, 2, 3, 4):
        _save(run, step, model)
    stale = run.checkpoints / ".step-00000005.pt.tmp-1"
    mine = run.checkpoints / f".step-00000006.pt.tmp-{os.getpid()}"  # this process may still be writing it
    stale.write_bytes(b""), mine.write_bytes(b"")
    prune_checkpoints(run.path, keep=2)
    assert [s for s, _ in run.checkpoint_files()] == [3, 4]
    assert not stale.exists() and mine.exists()
