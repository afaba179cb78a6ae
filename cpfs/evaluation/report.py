"""The evaluation report: ``results.json``, ``report.md`` and a self-contained ``report.html`` in a run folder.

Input: a results dict of this shape (every protocol returns the inner dicts)::

    {
      "meta": {"config": {...}, "checkpoint": "runs/x/ckpt-300.pt", ...},   # where the numbers came from
      "protocols": {
        "<protocol>": {"<feature source>": {"summary": {"<metric>": {"mean": m, "std": s}, ...}, ...}, ...},
        ...
      },
    }

e.g. ``results["protocols"]["linear_probe"]["cpfs"]["summary"]["conv3"]["mean"]``. ``write_report`` adds
the training curve (from the training stage's ``metrics.jsonl``: one JSON object per line, numeric keys
containing "loss" plotted against ``"step"`` or the line number), the per-layer probe accuracy bar chart
(every source of ``linear_probe``, e.g. CPFS vs random init) and any caller-made figures (e.g.
``plots.qualitative_row`` of held-out frames). Figures are written as PNGs under ``figures/`` and embedded in
the HTML as base64 data URIs: the HTML needs no other file and loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from cpfs.evaluation.plots import bar_chart, line_chart
from cpfs.run_folder import EvalFolder, read_metrics_file

PROTOCOL_TITLES: dict[str, str] = {
    "linear_probe": "Linear probe (top-1 accuracy per layer)",
    "segmentation": "Semantic segmentation probe",
    "davis": "DAVIS label propagation (J, F)",
    "foreground": "DAVIS foreground/background probe (fitted on davis_train, mIoU per layer)",
    "flow_alignment": "Flow-kernel alignment on held-out video",
    "motion_segmentation": "Motion-segmentation probe on held-out video",
    "finetune": "Fine-tuning (trunk + new head; VOC 2007 mAP, or digits accuracy at smoke scale)",
}


@dataclass(frozen=True)
class ReportPaths:
    """Files written by ``write_report``."""

    results_json: Path
    report_md: Path
    report_html: Path
    figures: dict[str, Path]  # name -> PNG


def _check_results(results: Mapping[str, Any]) -> Mapping[str, Mapping[str, Mapping[str, Any]]]:
    protocols = results.get("protocols")
    if not isinstance(protocols, Mapping):
        raise ValueError("results must have a 'protocols' dict: {protocol: {feature source: {'summary': {...}}}}")
    for proto, sources in protocols.items():
        if not isinstance(sources, Mapping):
            raise ValueError(f"results['protocols'][{proto!r}] must map feature-source names to result dicts")
        for source, res in sources.items():
            if not isinstance(res, Mapping) or not isinstance(res.get("summary"), Mapping):
                raise ValueError(f"results['protocols'][{proto!r}][{source!r}] has no 'summary' dict of metrics")
    return protocols


def _cell(value: Any) -> str:
    if isinstance(value, Mapping):
        m, s = value.get("mean"), value.get("std")
        if m is None or (isinstance(m, float) and math.isnan(m)):
            return "n/a"
        return f"{m:.3f} ± {s:.3f}" if s is not None else f"{m:.3f}"
    if isinstance(value, (int, float)):
        return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.3f}"
    return "n/a"


def _table_rows(sources: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns (the union of the summaries' metrics, in first-seen order) and one row per source."""
    metrics: list[str] = []
    for res in sources.values():
        metrics += [m for m in res["summary"] if m not in metrics]
    rows = [[name] + [_cell(res["summary"].get(m)) for m in metrics] for name, res in sources.items()]
    return ["source", *metrics], rows


def results_markdown_table(results: Mapping[str, Any]) -> str:
    """One Markdown table per protocol: a row per feature source, a column per metric, ``mean ± std``."""
    protocols = _check_results(results)
    parts = []
    for proto, sources in protocols.items():
        if not sources:
            continue
        header, rows = _table_rows(sources)
        parts.append(f"### {PROTOCOL_TITLES.get(proto, proto)}\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        parts += ["| " + " | ".join(r) + " |" for r in rows]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _paired_rows(protocols: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per (protocol, source, video) of the paired comparisons: difference and its CI."""
    header = ["protocol / source / video", "trained - random (same seed)", "CI low", "CI high", "pairs"]
    rows = []
    for proto, sources in protocols.items():
        for name, src in sources.items():
            p = src.get("paired") if isinstance(src, Mapping) else None
            if not isinstance(p, Mapping):
                continue
            label = f"{PROTOCOL_TITLES.get(proto, proto)} / {name}"
            rows.append([f"{label} / all videos", f"{p['mean']:+.3f}", f"{p['ci_low']:+.3f}", f"{p['ci_high']:+.3f}", str(p["n_pairs"])])
            for vid, v in (p.get("per_video") or {}).items():
                rows.append([f"{label} / {vid}", f"{v['mean']:+.3f}", f"{v['ci_low']:+.3f}", f"{v['ci_high']:+.3f}", str(v["n_pairs"])])
    return header, rows


def paired_markdown_table(protocols: Mapping[str, Mapping[str, Any]]) -> str:
    """The paired comparisons as a markdown table (empty string when there are none)."""
    header, rows = _paired_rows(protocols)
    if not rows:
        return ""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def loss_curve(records: list[dict[str, Any]]) -> np.ndarray | None:
    """Line chart of every numeric key containing "loss" against "step" (or the record number); None if none."""
    keys: list[str] = []
    for rec in records:
        keys += [k for k, v in rec.items() if "loss" in k.lower() and isinstance(v, (int, float)) and k not in keys]
    if not keys:
        return None
    series = {}
    for k in keys:
        pts = [(rec.get("step", i), rec[k]) for i, rec in enumerate(records) if isinstance(rec.get(k), (int, float))]
        series[k] = ([p[0] for p in pts], [p[1] for p in pts])
    return line_chart(series, title="Training loss", xlabel="step", ylabel="loss")


def probe_bar_chart(sources: Mapping[str, Mapping[str, Any]]) -> np.ndarray:
    """Per-layer accuracy of every source of the linear probe (e.g. CPFS vs random init), ±std over seeds."""
    layers: list[str] = []
    for res in sources.values():
        layers += [k for k in res["summary"] if k not in layers]
    series = {
        name: (
            [float(res["summary"].get(l, {}).get("mean", float("nan"))) for l in layers],
            [float(res["summary"].get(l, {}).get("std", 0.0)) for l in layers],
        )
        for name, res in sources.items()
    }
    return bar_chart(layers, series, title="Linear probe accuracy per layer", ylabel="top-1 accuracy", ylim=(0.0, 1.0))


def _png_bytes(image: np.ndarray, name: str) -> bytes:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"figure {name!r} must be a uint8 (H, W), (H, W, 3) or (H, W, 4) array, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"results contain a {type(obj).__name__}, which JSON cannot store")


def _safe_name(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    if not out:
        raise ValueError(f"figure name {name!r} has no usable character")
    return out


_CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 4px 10px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eee; }
figure { margin: 1em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""


def write_report(
    results: Mapping[str, Any],
    out_dir: str | Path,
    figures: Mapping[str, np.ndarray] | None = None,
    *,
    metrics_path: str | Path | None = None,
    title: str = "CPFS evaluation report",
) -> ReportPaths:
    """Write ``results.json``, ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``.

    ``figures`` are extra ``(H, W, 3)`` uint8 images by name (shown after the generated ones, in order).
    Raises ValueError for a results dict without the documented shape or a malformed figure.
    """
    protocols = _check_results(results)
    folder = EvalFolder(out_dir)
    out = folder.path
    folder.figures.mkdir(parents=True, exist_ok=True)

    generated: dict[str, tuple[str, np.ndarray]] = {}
    metrics_summary = None
    if metrics_path is not None:
        records = read_metrics_file(metrics_path)
        curve = loss_curve(records)
        if curve is not None:
            generated["loss_curve"] = ("Training loss", curve)
        last = records[-1] if records else {}
        metrics_summary = {"path": str(metrics_path), "records": len(records), "last": last}
    if protocols.get("linear_probe"):
        generated["linear_probe"] = ("Linear probe: accuracy per layer (mean ± std over seeds)", probe_bar_chart(protocols["linear_probe"]))
    all_figs = {**generated, **{name: (name.replace("_", " "), img) for name, img in (figures or {}).items()}}

    fig_paths: dict[str, Path] = {}
    fig_png: dict[str, bytes] = {}
    for name, (_, img) in all_figs.items():
        data = _png_bytes(img, name)
        path = folder.figures / f"{_safe_name(name)}.png"
        path.write_bytes(data)
        fig_paths[name], fig_png[name] = path, data

    doc = {
        **dict(results),
        "training_metrics": metrics_summary,
        "figures": {name: str(p.relative_to(out)) for name, p in fig_paths.items()},
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    results_json = folder.results_json
    results_json.write_text(json.dumps(doc, indent=2, default=_json_default, allow_nan=True) + "\n")

    meta = results.get("meta") or {}
    meta_json = json.dumps(meta, indent=2, default=_json_default)
    md = [f"# {title}\n", f"Written {doc['written_at']}. Every number, with its configuration and checkpoint, is in `results.json`.\n"]
    verdicts = list(meta.get("verdicts") or [])
    outlook = list(meta.get("outlook") or [])
    if verdicts:
        md.append("## The result in words\n\n" + "\n".join(f"- {v[0].upper() + v[1:]}." for v in verdicts) + "\n")
        md.append(paired_markdown_table(protocols))
    if outlook:
        md.append("## What this shows, and what to run next\n\n" + " ".join(outlook) + "\n")
    md.append("## Results\n\n" + results_markdown_table(results))
    if all_figs:
        md.append("## Figures\n")
        md += [f"### {caption}\n\n![{name}](figures/{fig_paths[name].name})\n" for name, (caption, _) in all_figs.items()]
    if meta:  # the full provenance last: results first for the reader
        md.append("## Run\n\n```json\n" + meta_json + "\n```\n")
    report_md = folder.report_md
    report_md.write_text("\n".join(md))

    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f"<p>Written {esc(doc['written_at'])}. Every number, with its configuration and checkpoint, is in <code>results.json</code>.</p>"]
    if verdicts:
        body.append('<h2>The result in words</h2><ul id="verdicts">' + "".join(f"<li>{esc(v[0].upper() + v[1:])}.</li>" for v in verdicts) + "</ul>")
        header, rows = _paired_rows(protocols)
        body.append("<table>" + "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        body += ["<tr><td>" + esc(r[0]) + "</td>" + "".join(f'<td class="num">{esc(c)}</td>' for c in r[1:]) + "</tr>" for r in rows]
        body.append("</table>")
    if outlook:
        body.append('<h2>What this shows, and what to run next</h2><p id="outlook">' + esc(" ".join(outlook)) + "</p>")
    body.append("<h2>Results</h2>")
    for proto, sources in protocols.items():
        if not sources:
            continue
        header, rows = _table_rows(sources)
        body.append(f"<h3>{esc(PROTOCOL_TITLES.get(proto, proto))}</h3><table>")
        body.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            body.append("<tr><td>" + esc(r[0]) + "</td>" + "".join(f'<td class="num">{esc(c)}</td>' for c in r[1:]) + "</tr>")
        body.append("</table>")
    if all_figs:
        body.append("<h2>Figures</h2>")
        for name, (caption, _) in all_figs.items():
            uri = "data:image/png;base64," + base64.b64encode(fig_png[name]).decode("ascii")
            body.append(f'<figure><img id="fig-{esc(_safe_name(name))}" alt="{esc(caption)}" src="{uri}"><figcaption>{esc(caption)}</figcaption></figure>')
    if meta:  # the full provenance last, folded: results first for the reader
        body.append(f"<h2>Run</h2><details><summary>Configuration, checkpoints and store</summary><pre>{esc(meta_json)}</pre></details>")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    report_html = folder.report_html
    report_html.write_text(page, encoding="utf-8")
    return ReportPaths(results_json, report_md, report_html, fig_paths)
