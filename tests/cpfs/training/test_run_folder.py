"""The run folder's names, its checkpoint listing and the one metrics.jsonl reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpfs.training.run_folder import EvalFolder, RunFolder, read_metrics_file


def test_every_name_comes_from_the_run_folder(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    assert run.checkpoints == tmp_path / "run" / "checkpoints"
    assert run.checkpoint(12) == tmp_path / "run" / "checkpoints" / "step-00000012.pt"
    assert run.metrics == tmp_path / "run" / "metrics.jsonl"
    assert run.eval == EvalFolder(tmp_path / "run" / "eval")
    ev = run.eval
    assert (ev.results_json.name, ev.report_md.name, ev.report_html.name, ev.figures.name) == (
        "results.json", "report.md", "report.html", "figures")
    assert RunFolder.of_checkpoint(run.checkpoint(3)) == run


def test_latest_checkpoint_orders_by_step_and_ignores_temporaries(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.latest_checkpoint() is None and run.checkpoint_files() == []
    for step in (9, 10, 2):
        run.checkpoint(step).parent.mkdir(parents=True, exist_ok=True)
        run.checkpoint(step).write_bytes(b"x")
    (run.checkpoints / ".step-00000011.pt.tmp-123").write_bytes(b"half")
    (run.checkpoints / "step-11.pt").write_bytes(b"not the naming scheme")
    assert [s for s, _ in run.checkpoint_files()] == [2, 9, 10]
    assert run.latest_checkpoint() == run.checkpoint(10)


def test_metrics_reader_skips_blank_lines_and_names_a_bad_line(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.read_metrics() == []  # nothing logged yet
    run.metrics.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n')
    assert [m["step"] for m in run.read_metrics()] == [1, 2]
    run.metrics.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: expected a JSON object"):
        run.read_metrics()
    with pytest.raises(FileNotFoundError, match="metrics file is missing"):
        read_metrics_file(tmp_path / "nowhere.jsonl")


def test_a_run_folder_and_an_evaluation_folder_have_one_writer_at_a_time(tmp_path) -> None:
    from cpfs.locks import LockBusy
    from cpfs.training.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    for folder, what in ((run, "run folder"), (run.eval, "evaluation folder")):
        with folder.lock():
            with pytest.raises(LockBusy, match=f"{what} {folder.path} is held by another run"):
                with folder.lock(wait=False):
                    pass
        with folder.lock(wait=False) as waited:  # free again once the holder is done
            assert waited is False
