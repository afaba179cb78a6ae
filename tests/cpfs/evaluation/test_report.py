"""The report from small but real results: results.json, Markdown tables, valid PNGs, a self-contained HTML
that headless Chromium opens without errors, with every image decoded and a screenshot that is not blank."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpfs.evaluation.baselines import random_init_model
from cpfs.evaluation.features import model_embedding_features
from cpfs.evaluation.plots import bar_chart, line_chart, pca_rgb, qualitative_row
from cpfs.evaluation.report import results_markdown_table, write_report
from cpfs.run_folder import read_metrics_file

CHROMIUM = Path("/usr/bin/chromium")


def fake_but_real_results() -> dict:
    """Results in the documented shape, from real (tiny) computations' numbers."""
    def probe(means: list[float]) -> dict:
        return {"summary": {f"conv{i + 1}": {"mean": m, "std": 0.01 * (i + 1)} for i, m in enumerate(means)}, "seeds": [0, 1]}

    return {
        "meta": {"config": {"width": 0.25, "steps": 3}, "checkpoint": "runs/demo/checkpoints/step-3.pt"},
        "protocols": {
            "linear_probe": {"cpfs": probe([0.41, 0.48, 0.52, 0.50, 0.47]), "random-init": probe([0.35, 0.33, 0.30, 0.28, 0.25])},
            "davis": {"cpfs": {"summary": {"J": {"mean": 0.61, "std": 0.05}, "F": {"mean": 0.55, "std": 0.07}}},
                      "colour-lab": {"summary": {"J": {"mean": 0.66, "std": 0.18}, "F": {"mean": 0.60, "std": 0.25}}}},
            "flow_alignment": {"flow-oracle": {"summary": {"alignment_centered": {"mean": 1.0, "std": 0.0}, "ce": {"mean": 5.5, "std": 0.1}}},
                               "cpfs": {"summary": {"alignment_centered": {"mean": 0.42, "std": 0.08}, "ce": {"mean": 5.55, "std": 0.1}}}},
        },
    }


def sample_figure() -> np.ndarray:
    rng = np.random.default_rng(0)
    frame = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    frame[20:44, 30:54] = (200, 40, 40)
    flow = np.zeros((64, 80, 2), np.float32)
    flow[20:44, 30:54] = (3.0, -1.0)
    model = random_init_model(width=0.25, seed=0)
    image = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float() / 255
    emb = model_embedding_features(model, stride=4)(image)[0].numpy()  # (D, 16, 20)
    mask = np.hypot(flow[..., 0], flow[..., 1]) > 1
    return qualitative_row(frame, flow, emb, mask)


@pytest.fixture
def report(tmp_path: Path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": s, "loss": 5.0 - np.log1p(s), "lr": 1e-3}) for s in range(1, 31)) + "\n")
    paths = write_report(fake_but_real_results(), tmp_path / "run", {"heldout_frame_0": sample_figure()}, metrics_path=metrics)
    return paths


def test_markdown_table_has_every_protocol_source_and_metric() -> None:
    md = results_markdown_table(fake_but_real_results())
    assert "| cpfs | 0.410 ± 0.010 | 0.480 ± 0.020 | 0.520 ± 0.030 | 0.500 ± 0.040 | 0.470 ± 0.050 |" in md
    assert "| source | conv1 | conv2 | conv3 | conv4 | conv5 |" in md
    assert "| colour-lab | 0.660 ± 0.180 | 0.600 ± 0.250 |" in md
    assert md.count("### ") == 3
    with pytest.raises(ValueError, match="'protocols'"):
        results_markdown_table({"linear_probe": {}})
    with pytest.raises(ValueError, match=r"\['davis'\]\['x'\] has no 'summary'"):
        results_markdown_table({"protocols": {"davis": {"x": {"J": 1.0}}}})


def test_report_files_and_pngs(report) -> None:
    doc = json.loads(report.results_json.read_text())
    assert doc["meta"]["checkpoint"] == "runs/demo/checkpoints/step-3.pt" and doc["meta"]["config"]["width"] == 0.25
    assert doc["protocols"]["linear_probe"]["cpfs"]["summary"]["conv3"]["mean"] == 0.52
    assert doc["training_metrics"]["records"] == 30
    assert set(report.figures) == {"loss_curve", "linear_probe", "heldout_frame_0"}
    for path in report.figures.values():
        with Image.open(path) as im:
            im.verify()  # a valid PNG
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
            assert im.format == "PNG" and arr.std() > 10  # not a blank canvas
    md = report.report_md.read_text()
    assert "figures/loss_curve.png" in md and "0.520 ± 0.030" in md


def test_html_is_self_contained(report) -> None:
    page = report.report_html.read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 3
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external file or URL
    assert "http://" not in page and "https://" not in page


PROBE_JS = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.id);
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images: imgs.length, decoded: ok, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=90)


def test_html_opens_in_headless_chromium(report, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (install Debian's chromium to check the HTML report in a browser)")
    # An instrumented copy: a script records image decoding and page errors into the DOM, which we dump.
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(report.report_html.read_text().replace("<head>", "<head>" + PROBE_JS, 1))
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", probe_page.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe["errors"] == []
    assert probe["images"] == 3 and sorted(probe["decoded"]) == ["fig-heldout_frame_0", "fig-linear_probe", "fig-loss_curve"]

    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", report.report_html.as_uri()], tmp_path)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    arr = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert arr.shape == (2000, 1200)
    assert arr.std() > 20 and (arr < 128).mean() > 0.01  # text, tables and figures drawn, not a blank page


def test_plots_reject_bad_input_and_pca_separates_clusters() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        line_chart({"loss": ([1, 2], [1.0])})
    with pytest.raises(ValueError, match="one value per group"):
        bar_chart(["a", "b"], {"x": ([1.0], None)})
    emb = np.zeros((8, 10, 10))
    emb[0, :, 5:] = 1.0  # two clusters: left and right halves
    rgb = pca_rgb(emb)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[:, :5].astype(int) - rgb[:, 5:].astype(int)).max() > 200
    assert (rgb[:, :5] == rgb[0, 0]).all()


def test_metrics_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1, "loss": 2.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        read_metrics_file(bad)
    with pytest.raises(ValueError, match="must be a uint8"):
        write_report(fake_but_real_results(), tmp_path / "r", {"bad": np.zeros((4, 4, 3), np.float32)})
