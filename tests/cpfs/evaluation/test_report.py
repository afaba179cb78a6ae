"""The report from small but real results: results.json, Markdown tables, valid PNGs (one file per figure), names
of held-out videos instead of their ids, a glossary under each table, the headline figure, the configuration in
an appendix, and a self-contained HTML that headless Chromium opens without errors, with every image decoded and
a screenshot that is not blank."""

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
from cpfs.evaluation.plots import bar_chart, ema, interval_chart, loss_chart, pca_rgb, qualitative_row
from cpfs.evaluation.report import ReportFigure, write_report
from cpfs.evaluation.tables import results_markdown_table
from cpfs.training.run_folder import read_metrics_file

CHROMIUM = Path("/usr/bin/chromium")
VIDEO_A, VIDEO_B = "f5d41eb5f1e1b22571c0", "0a1b2c3d4e5f60718293"  # content ids of two held-out videos


def paired(mean: float, half: float, per_video: dict[str, tuple[float, float]], against: str = "random-init seed 0",
           metric: str = "alignment_centered") -> dict:
    """A paired comparison in the shape of ``cpfs.evaluation.paired.paired_summary``."""
    def ci(m: float, h: float) -> dict:
        return {"mean": m, "ci_low": m - h, "ci_high": m + h, "level": 0.95, "n_pairs": 8, "n_seeds": 2}

    return {"metric": metric, "against": against, **ci(mean, half), "per_video": {v: ci(m, h) for v, (m, h) in per_video.items()},
            "verdict": f"the trained network beats {against} on held-out centered flow alignment by {mean:+.3f}"}


def fake_but_real_results() -> dict:
    """Results in the documented shape, from real (tiny) computations' numbers."""
    def probe(means: list[float]) -> dict:
        return {"summary": {f"conv{i + 1}": {"mean": m, "std": 0.01 * (i + 1)} for i, m in enumerate(means)}, "seeds": [0, 1]}

    per_video = {VIDEO_A: (0.30, 0.05), VIDEO_B: (0.20, 0.08)}
    fa_cpfs = {"summary": {"alignment": {"mean": 0.431, "std": 0.02}, "alignment_centered": {"mean": 0.42, "std": 0.08},
                           "ce": {"mean": 5.55, "std": 0.1}},
               "paired": paired(0.25, 0.06, per_video),
               "paired_position": paired(0.10, 0.04, per_video, against="pixel position alone")}
    return {
        "meta": {"config": {"width": 0.25, "steps": 3, "store": {"path": "s.zarr"}},
                 "checkpoint": "runs/demo/checkpoints/step-3.pt",
                 "checkpoints": [{"name": "cpfs", "step": 3}],
                 "heldout": [{"video_id": VIDEO_A, "name": "carphone_pristine.mp4", "start": 0, "stop": 300},
                             {"video_id": VIDEO_B, "name": "soapbox", "start": 0, "stop": 99}],
                 "seeds": [0, 1], "notes": ["std is over seeds"], "warnings": [],
                 "verdicts": [fa_cpfs["paired"]["verdict"], fa_cpfs["paired_position"]["verdict"]],
                 "outlook": ["Training worked (the `demo` preset, 3 steps).", "Run `cpfs run --preset cpu-hour` next."]},
        "protocols": {
            "linear_probe": {"cpfs": probe([0.41, 0.48, 0.52, 0.50, 0.47]), "random-init": probe([0.35, 0.33, 0.30, 0.28, 0.25])},
            "davis": {"cpfs": {"summary": {"J": {"mean": 0.61, "std": 0.05}, "F": {"mean": 0.55, "std": 0.07}},
                               "paired": paired(0.04, 0.03, {"soapbox": (0.05, 0.04), "bmx-trees": (0.03, 0.05)}, metric="J&F")},
                      "colour-lab": {"summary": {"J": {"mean": 0.66, "std": 0.18}, "F": {"mean": 0.60, "std": 0.25}}}},
            "flow_alignment": {"flow-oracle": {"summary": {"alignment_centered": {"mean": 1.0, "std": 0.0}, "ce": {"mean": 5.5, "std": 0.1}}},
                               "cpfs": fa_cpfs,
                               "random-init": {"summary": {"alignment": {"mean": 0.818, "std": 0.03},
                                                           "alignment_centered": {"mean": 0.17, "std": 0.05}}}},
        },
    }


def sample_figure() -> np.ndarray:
    """A held-out frame, its flow, and the embeddings of two random networks side by side in one strip."""
    rng = np.random.default_rng(0)
    frame = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    frame[20:44, 30:54] = (200, 40, 40)
    flow = np.zeros((64, 80, 2), np.float32)
    flow[20:44, 30:54] = (3.0, -1.0)
    image = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float() / 255
    embeddings = {f"net {s}": model_embedding_features(random_init_model(width=0.25, seed=s), stride=4)(image)[0].numpy()
                  for s in (0, 1)}  # (D, 16, 20) each
    mask = np.hypot(flow[..., 0], flow[..., 1]) > 1
    return qualitative_row(frame, flow, embeddings, {name: mask for name in embeddings}, frame_label="soapbox frame 3")


FIGURES = {"headline", "loss_curve", "validation", "linear_probe", "heldout_0", "davis_soapbox"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report, written once for the tests that read it."""
    tmp_path = tmp_path_factory.mktemp("report")
    metrics = tmp_path / "metrics.jsonl"
    rng = np.random.default_rng(0)
    metrics.write_text("\n".join(json.dumps({"step": s, "loss": 5.0 - np.log1p(s) + rng.normal(0, 0.3), "lr": 1e-3})
                                 for s in range(1, 201)) + "\n")
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps({"step": s, "J&F": jf, "J": jf, "F": jf}) + "\n"
                                  for s, jf in ((1, 0.40), (2, 0.47), (3, 0.45))))
    # A protocol's figure already written beside the report (as DAVIS does): embedded, never written again.
    davis_png = tmp_path / "run" / "figures" / "davis_soapbox.png"
    davis_png.parent.mkdir(parents=True)
    Image.fromarray(sample_figure()[::-1].copy()).save(davis_png)
    figures = [ReportFigure("heldout_0", "Held-out frame: soapbox, frame 3", image=sample_figure()),
               ReportFigure("davis_soapbox", "DAVIS soapbox: propagated masks", section="davis", path=davis_png)]
    return write_report(fake_but_real_results(), tmp_path / "run", figures, metrics_path=metrics,
                        validation_path=validation)


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


def test_report_files_and_pngs_one_file_per_figure(report) -> None:
    doc = json.loads(report.results_json.read_text())
    assert doc["meta"]["checkpoint"] == "runs/demo/checkpoints/step-3.pt" and doc["meta"]["config"]["width"] == 0.25
    assert doc["protocols"]["linear_probe"]["cpfs"]["summary"]["conv3"]["mean"] == 0.52
    assert doc["training_metrics"]["records"] == 200
    assert set(report.figures) == set(doc["figures"]) == FIGURES
    # One file per figure: figures/ holds exactly the report's figures, no two with the same bytes.
    files = sorted((report.report_md.parent / "figures").iterdir())
    assert [p.stem for p in files] == sorted(FIGURES)
    assert len({p.read_bytes() for p in files}) == len(files)
    for path in report.figures.values():
        with Image.open(path) as im:
            im.verify()  # a valid PNG
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
            assert im.format == "PNG" and arr.std() > 10  # not a blank canvas
    md = report.report_md.read_text()
    assert "figures/loss_curve.png" in md and "0.520 ± 0.030" in md
    with pytest.raises(ValueError, match="two figures are named 'x'"):  # before anything is written
        write_report(fake_but_real_results(), report.report_md.parent,
                     [ReportFigure("x", "a", image=sample_figure()), ReportFigure("x", "b", image=sample_figure())])
    assert sorted(p.stem for p in (report.report_md.parent / "figures").iterdir()) == sorted(FIGURES)


def _body_and_appendix(md: str) -> tuple[str, str]:
    body, appendix = md.split("## Appendix", 1)
    return body, appendix


def test_report_shows_names_not_ids(report) -> None:
    md, page = report.report_md.read_text(), report.report_html.read_text()
    body, _ = _body_and_appendix(md)
    for text in (body, page.split('id="appendix"')[0]):
        assert "carphone_pristine.mp4" in text and "soapbox" in text
        assert VIDEO_A not in text.replace(f'title="content id {VIDEO_A}"', "")  # the full id: a tooltip only
    # In the tables, the name with the id's first 8 characters in small print.
    assert f"| carphone_pristine.mp4 <sub>{VIDEO_A[:8]}</sub> |" in body
    assert (f'<span class="name" title="content id {VIDEO_A}">carphone_pristine.mp4</span> '
            f'<small class="id">{VIDEO_A[:8]}</small>') in page
    # Both comparisons of flow alignment, per video, with their CIs.
    assert "| cpfs − pixel position alone | soapbox <sub>" in body
    assert "| +0.300 | +0.250 .. +0.350 |" in body


def test_report_has_glossaries_outlook_and_a_folded_appendix(report) -> None:
    md, page = report.report_md.read_text(), report.report_html.read_text()
    body, appendix = _body_and_appendix(md)
    assert "- **alignment_centered**: the same alignment after centering" in body
    assert "Why random init can score a higher raw alignment" in body and "Why random init" in page
    assert "- **J**: region similarity" in body and "- **conv1, conv2, conv3, conv4, conv5**: top-1 accuracy" in body
    from cpfs.evaluation.glossary import table_glossary

    rows = dict(table_glossary("davis", ["J"], ["cpfs", "random-init (conv1+conv2)", "someone-else"]))
    assert rows["random-init (conv1+conv2)"].startswith("random init of the training seed read at conv1+conv2, its own best")
    assert "someone-else" not in rows and rows["cpfs"].startswith("the trained checkpoint")
    # Under the DAVIS table, what propagation compares; under no other table.
    assert body.count("Label propagation compares pixels by a network's features named in davis_layers") == 1
    assert body.index("Label propagation compares pixels") > body.index("DAVIS label propagation (J, F)")
    assert "- **95 % CI**: bootstrap confidence interval" in body and "- **flow-oracle**:" in body
    assert body.index("## The result in words") < body.index("## What this shows") < body.index("## Results")
    assert "Run `cpfs run --preset cpu-hour` next." in body
    # The configuration only in the appendix: last in the Markdown, folded in the HTML.
    assert '"width": 0.25' in appendix and '"width": 0.25' not in body
    assert appendix.rstrip().endswith("```")
    folded = re.search(r"<details><summary>[^<]*</summary>\s*<pre>(.*?)</pre>\s*</details>", page, re.S)
    assert folded and "&#34;width&#34;: 0.25" in folded.group(1)
    assert page.count("&#34;width&#34;: 0.25") == 1
    terms = re.search(r'<dl class="glossary" id="glossary-flow_alignment">(.*?)</dl>', page, re.S)
    assert terms and "<dt>ce_excess</dt>" not in terms.group(1)  # only the table's own columns
    assert "<dt>alignment</dt>" in terms.group(1) and "<dt>ce</dt>" in terms.group(1)


def test_headline_figure_is_in_both_reports(report) -> None:
    md, page = report.report_md.read_text(), report.report_html.read_text()
    assert "![headline](figures/headline.png)" in md
    assert md.index("figures/headline.png") < md.index("## What this shows")
    assert re.search(r'<img id="fig-headline" [^>]*src="data:image/png;base64,', page)
    with Image.open(report.figures["headline"]) as im:
        assert im.size[0] == 800 and im.size[1] > 300  # two panels: flow alignment and DAVIS, 3 rows each


def test_templates_escape_what_they_insert(tmp_path: Path) -> None:
    results = fake_but_real_results()
    results["meta"]["heldout"][0]["name"] = "<script>alert(1)</script>.mp4"
    results["meta"]["outlook"] = ["a < b & c: run `cpfs run --preset cpu-hour` or `<b>`"]
    page = write_report(results, tmp_path / "r").report_html.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;.mp4" in page
    # Markdown code spans of the outlook become <code>, their content escaped too.
    assert "a &lt; b &amp; c: run <code>cpfs run --preset cpu-hour</code> or <code>&lt;b&gt;</code>" in page


def test_html_is_self_contained(report) -> None:
    page = report.report_html.read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == len(FIGURES)
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
    assert probe["images"] == len(FIGURES) and sorted(probe["decoded"]) == sorted(f"fig-{f}" for f in FIGURES)
    # The rendered page: the names, the glossary and the folded appendix as a reader sees them.
    assert "carphone_pristine.mp4" in dom.stdout and 'id="glossary-flow_alignment"' in dom.stdout
    assert re.search(r"<details>\s*<summary>", dom.stdout) and "<details open" not in dom.stdout

    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", report.report_html.as_uri()], tmp_path)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    arr = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert arr.shape == (2000, 1200)
    assert arr.std() > 20 and (arr < 128).mean() > 0.01  # text, tables and figures drawn, not a blank page


def test_plots_reject_bad_input_and_pca_separates_clusters() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        loss_chart({"loss": ([1, 2], [1.0])})
    with pytest.raises(ValueError, match="one value per group"):
        bar_chart(["a", "b"], {"x": ([1.0], None)})
    with pytest.raises(ValueError, match="at least one panel"):
        interval_chart([("t", "x", [])])
    emb = np.zeros((8, 10, 10))
    emb[0, :, 5:] = 1.0  # two clusters: left and right halves
    rgb = pca_rgb(emb)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[:, :5].astype(int) - rgb[:, 5:].astype(int)).max() > 200
    assert (rgb[:, :5] == rgb[0, 0]).all()


def test_ema_is_bias_corrected_and_smooths() -> None:
    assert ema([2.0, 2.0, 2.0], span=10) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    assert ema([1.0, 5.0], span=1) == pytest.approx([1.0, 5.0])  # span 1: the raw values
    # Naive reference: the mean with weights b^(t - i), normalised by their sum.
    x = np.random.default_rng(0).normal(size=50)
    b = 1 - 2 / (7 + 1)
    naive = [sum(b ** (t - i) * x[i] for i in range(t + 1)) / sum(b ** (t - i) for i in range(t + 1)) for t in range(50)]
    assert ema(x, span=7) == pytest.approx(naive)
    assert np.diff(ema(x, span=7)).std() < np.diff(x).std() / 3
    with pytest.raises(ValueError, match="span"):
        ema(x, span=0.5)


def test_probe_legend_covers_no_bar() -> None:
    fig = bar_chart([f"conv{i}" for i in range(1, 6)], {"cpfs": ([0.9] * 5, [0.05] * 5), "random-init": ([0.95] * 5, None),
                                                       "chance": ([0.1] * 5, None)}, ylim=(0.0, 1.0))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(renderer)
    assert all(not legend.overlaps(bar.get_window_extent(renderer)) for bar in ax.patches)
    assert not legend.overlaps(ax.get_window_extent(renderer))  # outside the plotting area altogether


def test_metrics_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1, "loss": 2.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        read_metrics_file(bad)
    with pytest.raises(ValueError, match="must be a uint8"):
        write_report(fake_but_real_results(), tmp_path / "r", [ReportFigure("bad", "", image=np.zeros((4, 4, 3), np.float32))])
