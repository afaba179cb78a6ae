"""``cpfs.export.exporter``: checkpoint -> export -> ``load_backbone`` bit-exact, the ONNX graph against eager PyTorch,
reproducible weight files, a model card whose numbers are ``results.json``'s, and a bad target refused before
any work. One export of a width-0.125 network is shared by the module (about 3 s)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import cpfs
import cpfs.export.exporter as export_lib
from cpfs.training.checkpoint import CheckpointError, file_sha256, load_model
from cpfs.export.exporter import ExportError, export_model, export_target_error, load_exported_model
from cpfs.export.model_card import NOT_RECORDED, model_card, paired_rows
from cpfs.training.run_folder import ExportFolder
from tests.cpfs.export.tiny_run import CROP, VIDEOS, write_results, write_run

FORBIDDEN = "/proc/cpfs-export"  # /proc refuses new files even to root, whatever os.access says


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = write_run(root / "run")
    results = write_results(ckpt)
    result = export_model(root / "run", root / "out")
    return ckpt, results, result


def test_round_trip_is_bit_exact(exported):
    ckpt, _, result = exported
    model, _ = load_model(ckpt)
    loaded = load_exported_model(result.folder.path)
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    images = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    from_export, from_ckpt = cpfs.load_backbone(result.folder.path), cpfs.load_backbone(ckpt)
    assert torch.equal(from_export.dense_hypercolumns(images), from_ckpt.dense_hypercolumns(images))
    assert torch.equal(from_export.dense_embedding(images), from_ckpt.dense_embedding(images))
    assert torch.equal(cpfs.load_backbone(result.folder.weights).dense_embedding(images), from_ckpt.dense_embedding(images))


def test_onnx_agrees_with_pytorch(exported):
    _, _, result = exported
    record = json.loads(result.folder.record.read_text())
    check = record["onnx"]["check"]
    assert result.onnx_max_abs_diff == check["max_abs_diff"] <= 1e-4
    assert set(check["per_output"]) == set(export_lib.ONNX_OUTPUTS)
    # two input sizes, one of them not the traced one: height and width are dynamic
    assert check["sizes"] == [[2, 3, CROP, CROP], [1, 3, CROP + 17, CROP + 45]]
    assert record["checkpoint"]["sha256"] == result.checkpoint.sha256
    assert record["files"]["model.safetensors"] == file_sha256(result.folder.weights)


def test_same_checkpoint_same_weight_files_and_an_export_is_replaced(exported, tmp_path):
    ckpt, _, result = exported
    before = {f.name: f.read_bytes() for f in (result.folder.weights, result.folder.architecture)}
    again = export_model(ckpt, result.folder.path)  # an earlier export is a valid target: replaced
    assert {f.name: f.read_bytes() for f in (again.folder.weights, again.folder.architecture)} == before
    assert json.loads(again.folder.architecture.read_text())["layers"]["conv1"] == {
        "channels": 12, "offset": 3.0, "stride": 4}


def test_the_cards_numbers_are_results_json(exported):
    ckpt, results_path, result = exported
    card = result.folder.card.read_text()
    results = json.loads(results_path.read_text())
    rows = paired_rows(results)
    assert len(rows) == 2
    for r in rows:
        line = next(line for line in card.splitlines() if line.startswith(f"| {r['protocol']} | {r['source']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == r["against"]
        assert cells[4:] == [f"{r[k]:+.3f}" for k in ("trained_mean", "random_same_seed_mean", "mean", "ci_low", "ci_high")]
    for verdict in results["meta"]["verdicts"]:
        assert verdict[0].upper() + verdict[1:] in card
    assert "95 % confidence intervals" in card
    # training data and settings, from the checkpoint
    for v in VIDEOS.values():
        assert f"| {v['name']} |" in card and f"| {v['backend']} |" in card
    assert "0123456789abcdef" in card and "40 frames" in card and "7 of 7 steps, seed 3" in card
    assert "12.6 min" in card and "cpu (x86_64)" in card and "| `optimizer.lr` | `0.001` |" in card
    assert "re-estimated them on training crops" in card  # the evaluation recalibrated batch norm


def test_card_says_what_is_not_recorded_or_not_this_checkpoints(tmp_path):
    ckpt = write_run(tmp_path / "old", provenance=False)
    _, record = load_model(ckpt)
    card = model_card(record, None, {"onnx": {"check": {"max_abs_diff": 1e-6}}})
    assert "Flow backend(s): not recorded" in card and f"| {NOT_RECORDED} |" in card
    assert f"Training time (wall clock, all resumed parts): {NOT_RECORDED}" in card and "Not evaluated" in card
    other = json.loads(write_results(ckpt, sha256="f" * 64).read_text())
    card = model_card(record, other, {"results_json": "x/results.json"})
    assert "is of another checkpoint" in card and "+0.061" not in card


def test_a_bad_target_is_refused_before_any_work(exported, tmp_path, monkeypatch):
    ckpt, _, _ = exported
    monkeypatch.setattr(export_lib, "load_model", lambda *a: pytest.fail("the checkpoint was read"))
    (tmp_path / "file").write_text("x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for target, message in ((tmp_path / "file", "exists and is not a folder"),
                            (busy, r"holds other files \(notes.txt\)"),
                            (tmp_path / "file" / "sub", "is a file, not a folder"),
                            (Path(FORBIDDEN), "is not writable")):
        with pytest.raises(ExportError, match=message) as err:
            export_model(ckpt, target)
        assert err.value.parameter == "out"
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    with pytest.raises(ExportError, match="none.json: evaluation results not found") as err:
        export_model(ckpt, tmp_path / "new", results_json=tmp_path / "none.json")
    assert err.value.parameter == "results_json"
    assert export_target_error(tmp_path / "new") is None and not (tmp_path / "new").exists()


def test_a_missing_checkpoint_is_named_and_creates_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        export_model(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_folder_names_one_owner(exported):
    _, _, result = exported
    assert sorted(p.name for p in result.folder.path.iterdir()) == sorted(f.name for f in ExportFolder(result.folder.path).files())
    shutil.copy(result.folder.weights, result.folder.path.parent / "copy.safetensors")  # alone: not an export
    with pytest.raises(CheckpointError):
        cpfs.load_backbone(result.folder.path.parent / "copy.safetensors")


def test_the_pipeline_checks_its_export_folder_before_any_stage(tmp_path):
    from cpfs.config import PipelineConfig
    from cpfs.pipeline import PreflightError, preflight
    from cpfs.training.run_folder import RunFolder

    busy = RunFolder(tmp_path / "run").export.path
    busy.mkdir(parents=True)
    (busy / "notes.txt").write_text("mine")
    cfg = {"train": {"run_dir": str(tmp_path / "run")}, "ingest": {"store": {"path": str(tmp_path / "s.zarr")}}}
    with pytest.raises(PreflightError, match=r"parameter export: .*notes.txt"):
        preflight(PipelineConfig.model_validate({**cfg, "export": True}))
    preflight(PipelineConfig.model_validate(cfg))  # without the switch the folder is not the pipeline's concern
