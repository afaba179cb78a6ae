"""The evaluation report: ``results.json``, ``report.md`` and a self-contained ``report.html`` in a run folder.

Input: a results dict of this shape (every protocol returns the inner dicts)::

    {
      "meta": {"config": {...}, "checkpoint": "runs/x/ckpt-300.pt", "heldout": [{"video_id", "name", ...}],
               "verdicts": [...], "outlook": [...], ...},   # where the numbers came from, and what they say
      "protocols": {
        "<protocol>": {"<feature source>": {"summary": {"<metric>": {"mean": m, "std": s}, ...},
                                           "paired": {...}?, "paired_position": {...}?}, ...},
        ...
      },
    }

e.g. ``results["protocols"]["linear_probe"]["cpfs"]["summary"]["conv3"]["mean"]``.

The report reads top to bottom as a person asks: what the result is (the verdicts and the headline figure: the
paired differences, trained minus random init of the same seed and minus pixel position, with their CIs, per
protocol and held-out video), what it means and what to run next (``meta["outlook"]``), what was measured
(the checkpoint, the held-out videos by file name with their content ids in small print), training (the loss
with its moving average, the validation score over steps), each protocol's table with a glossary of its
columns and its figures, examples, and last, folded, the configuration. Videos are shown by name
(``meta["heldout"][i]["name"]``), their ids in small print.

One model of the page (``_page``: plain values, the ``cpfs.evaluation.tables`` tables and the figures) is
rendered by two Jinja2 templates (``templates/report.html.j2`` with autoescaping, ``templates/report.md.j2``).
Every figure is one PNG under ``figures/`` (a figure a protocol already wrote there, e.g. DAVIS's, is embedded
as it is, not written again), embedded in the HTML as a base64 data URI: the HTML needs no other file and loads
nothing from the network.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import jinja2
import markupsafe
import numpy as np

from cpfs.evaluation import plots
from cpfs.evaluation.tables import (
    COMPARISONS,
    SHORT_TITLES,
    Name,
    breakdown,
    check_results,
    comparisons,
    paired_table,
    protocol_table,
    markdown_table,
    video_label,
    video_names,
)
from cpfs.training.run_folder import EvalFolder, read_metrics_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VALIDATION_METRIC = "J&F"  # the measure of validation.jsonl (cpfs.training.validation.METRIC)


@dataclass(frozen=True)
class ReportFigure:
    """A figure to show: an image drawn by the caller, or a PNG a protocol already wrote."""

    name: str  # the file's stem under figures/ and the HTML element's id
    caption: str
    section: str = "examples"  # where it is shown: a protocol's name (under its table) or "examples"
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # (H, W, 3) uint8: figures/<name>.png
    path: Path | None = None  # an existing PNG: embedded as it is (copied into figures/ only if elsewhere)

    def __post_init__(self) -> None:
        if (self.image is None) == (self.path is None):
            raise ValueError(f"figure {self.name!r}: give exactly one of image and path")


@dataclass(frozen=True)
class ReportPaths:
    """Files written by ``write_report``."""

    results_json: Path
    report_md: Path
    report_html: Path
    figures: dict[str, Path]  # name -> PNG


@dataclass(frozen=True)
class _Shown:
    """A figure as the page shows it."""

    name: str
    caption: str
    section: str
    file: str  # path relative to the report
    uri: str  # base64 data URI (HTML)


# -----------------------------------------------------------------------------------------------------------
# Charts made from the results


def headline_chart(protocols: Mapping[str, Mapping[str, Any]],
                   names: Mapping[str, str] | None = None) -> "Figure | None":
    """The headline figure: every paired difference with its CI, a panel per protocol, a row per held-out video
    (or DAVIS sequence) under the pooled one; None when there is no paired comparison."""
    names = names or {}
    panels: dict[str, tuple[str, str, dict[str, tuple[dict[str, plots.Interval], bool]]]] = {}
    trained = {source for _, source, _, _ in comparisons(protocols)}
    for proto, source, key, p in comparisons(protocols):
        metric, pct = p.get("metric", "score"), round(100 * float(p.get("level", 0.95)))
        _, _, rows = panels.setdefault(proto, (f"{SHORT_TITLES.get(proto, proto)}: {metric}",
                                               f"difference in {metric} (dot) with its {pct} % CI (bar)", {}))
        for label, r, pooled in breakdown(proto, p, names):
            text = f"{source}: {label.text}" if len(trained) > 1 else label.text
            rows.setdefault(text, ({}, pooled))[0][COMPARISONS[key]] = (r["mean"], r["ci_low"], r["ci_high"])
    if not panels:
        return None
    return plots.interval_chart([(t, x, [(label, by, pooled) for label, (by, pooled) in rows.items()])
                                 for t, x, rows in panels.values()])


def loss_curve(records: list[dict[str, Any]]) -> "Figure | None":
    """Every numeric key containing "loss" against "step" (or the record number), raw and smoothed; None if none."""
    keys: list[str] = []
    for rec in records:
        keys += [k for k, v in rec.items() if "loss" in k.lower() and isinstance(v, (int, float)) and k not in keys]
    if not keys:
        return None
    series = {}
    for k in keys:
        pts = [(rec.get("step", i), rec[k]) for i, rec in enumerate(records) if isinstance(rec.get(k), (int, float))]
        series[k] = ([p[0] for p in pts], [p[1] for p in pts])
    return plots.loss_chart(series)


def validation_curve(records: list[dict[str, Any]], evaluated_step: int | None = None) -> "Figure | None":
    """The held-out validation score (``validation.jsonl``) over training steps; None below two validations."""
    pts = [(int(r["step"]), float(r[VALIDATION_METRIC])) for r in records
           if isinstance(r.get("step"), (int, float)) and isinstance(r.get(VALIDATION_METRIC), (int, float))]
    if len(pts) < 2:
        return None
    return plots.validation_chart([s for s, _ in pts], [v for _, v in pts], metric=f"DAVIS {VALIDATION_METRIC}",
                                  evaluated_step=evaluated_step,
                                  title="Validation during training (DAVIS sequences not trained on)")


def probe_bar_chart(sources: Mapping[str, Mapping[str, Any]]) -> "Figure":
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
    return plots.bar_chart(layers, series, title="Linear probe accuracy per layer", ylabel="top-1 accuracy", ylim=(0.0, 1.0))


# -----------------------------------------------------------------------------------------------------------
# Writing


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


def _evaluated_step(meta: Mapping[str, Any]) -> int | None:
    checkpoints = meta.get("checkpoints") or []
    step = checkpoints[0].get("step") if checkpoints and isinstance(checkpoints[0], Mapping) else None
    return int(step) if isinstance(step, (int, float)) else None


def _write_figures(charts: Sequence[tuple[str, str, str, "Figure"]], figures: Sequence[ReportFigure],
                   folder: EvalFolder) -> dict[str, tuple[str, str, Path, bytes]]:
    """Each figure as one PNG under ``figures/``: ``{name: (caption, section, path, bytes)}``. Charts are encoded
    by matplotlib, drawn images by Pillow; an existing file is kept where it is (copied in only if elsewhere)."""
    items = [(name, caption, section, plots.png_bytes(chart), None) for name, caption, section, chart in charts]
    items += [(f.name, f.caption, f.section, None if f.image is None else plots.image_png_bytes(f.image, f.name), f.path)
              for f in figures]
    stems: set[str] = set()
    for name, *_ in items:  # every name checked before any file is written
        if (stem := _safe_name(name)) in stems:
            raise ValueError(f"two figures are named {name!r}: each figure is one file, figures/{stem}.png")
        stems.add(stem)
    out: dict[str, tuple[str, str, Path, bytes]] = {}
    for name, caption, section, data, src in items:
        path = folder.figures / f"{_safe_name(name)}.png"
        if data is not None:
            path.write_bytes(data)
        else:
            if not Path(src).is_file():
                raise FileNotFoundError(f"{src}: figure {name!r} is missing")
            if Path(src).resolve() != path.resolve():
                shutil.copyfile(src, path)
            data = path.read_bytes()
        out[name] = (caption, section, path, data)
    return out


def inline_code(text: str) -> markupsafe.Markup:
    """HTML of a sentence written for Markdown: escaped, with its `code spans` as ``<code>`` (the outlook names
    commands that way)."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def _environment() -> jinja2.Environment:
    # Autoescaping by the template's name: report.html.j2 escapes every value it inserts, report.md.j2 none.
    env = jinja2.Environment(loader=jinja2.PackageLoader("cpfs.evaluation", "templates"),
                             autoescape=jinja2.select_autoescape(["html.j2"], default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["md_table"] = markdown_table
    env.filters["code"] = inline_code
    env.tests["name"] = lambda c: isinstance(c, Name)
    return env


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def write_report(
    results: Mapping[str, Any],
    out_dir: str | Path,
    figures: Sequence[ReportFigure] = (),
    *,
    metrics_path: str | Path | None = None,
    validation_path: str | Path | None = None,
    title: str = "CPFS evaluation report",
) -> ReportPaths:
    """Write ``results.json``, ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``.

    ``figures`` are shown beside the generated ones (the headline, the loss and validation curves, the
    linear-probe chart), each under its ``section``. ``metrics_path``: the training's ``metrics.jsonl``;
    ``validation_path``: its ``validation.jsonl`` (``cpfs.training.run_folder.RunFolder``).
    Raises ValueError for a results dict without the documented shape, a malformed figure or two figures of
    one name.
    """
    protocols = check_results(results)
    meta = results.get("meta") or {}
    names = video_names(meta)
    folder = EvalFolder(out_dir)
    out = folder.path
    folder.figures.mkdir(parents=True, exist_ok=True)

    charts: list[tuple[str, str, str, Figure]] = []  # (name, caption, section, chart)
    headline = headline_chart(protocols, names)
    if headline is not None:
        charts.append(("headline", "Trained network minus each baseline, per protocol and held-out video: the "
                       "estimate (dot) and its confidence interval (bar). A bar clear of 0 is a measurable "
                       "difference.", "headline", headline))
    metrics_summary = None
    if metrics_path is not None:
        records = read_metrics_file(metrics_path)
        curve = loss_curve(records)
        if curve is not None:
            charts.append(("loss_curve", "Training loss per step (faint) and its moving average (bold).", "training", curve))
        metrics_summary = {"path": str(metrics_path), "records": len(records), "last": records[-1] if records else {}}
    if validation_path is not None and Path(validation_path).is_file():
        curve = validation_curve(read_metrics_file(validation_path), _evaluated_step(meta))
        if curve is not None:
            charts.append(("validation", "Held-out DAVIS J&F at each validated training step; the best step's "
                           "checkpoint (star) is the run's best.pt, the one evaluated unless another was named.",
                           "training", curve))
    if protocols.get("linear_probe"):
        charts.append(("linear_probe", "Linear probe: accuracy per layer (mean ± std over seeds).", "linear_probe",
                       probe_bar_chart(protocols["linear_probe"])))
    written = _write_figures(charts, figures, folder)

    written_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = {
        **dict(results),
        "training_metrics": metrics_summary,
        "figures": {name: str(p.relative_to(out)) for name, (_, _, p, _) in written.items()},
        "written_at": written_at,
    }
    folder.results_json.write_text(json.dumps(doc, indent=2, default=_json_default, allow_nan=True) + "\n")

    shown = [_Shown(_safe_name(name), caption, section, str(p.relative_to(out)),
                    "data:image/png;base64," + base64.b64encode(data).decode("ascii"))
             for name, (caption, section, p, data) in written.items()]
    page = _page(results, protocols, names, shown, title, written_at)
    env = _environment()
    folder.report_md.write_text(env.get_template("report.md.j2").render(page), encoding="utf-8")
    folder.report_html.write_text(env.get_template("report.html.j2").render(page), encoding="utf-8")
    return ReportPaths(folder.results_json, folder.report_md, folder.report_html,
                       {name: p for name, (_, _, p, _) in written.items()})


def _page(results: Mapping[str, Any], protocols: Mapping[str, Mapping[str, Any]], names: Mapping[str, str],
          shown: Sequence[_Shown], title: str, written_at: str) -> dict[str, Any]:
    """What both templates render: plain values, tables and figures, in the page's order."""
    meta = results.get("meta") or {}
    by_section: dict[str, list[_Shown]] = {}
    for s in shown:
        by_section.setdefault(s.section, []).append(s)
    sections = [(protocol_table(p, s), by_section.pop(p, [])) for p, s in protocols.items() if s]
    headline = by_section.pop("headline", [])
    training = by_section.pop("training", [])
    examples = [s for group in by_section.values() for s in group]  # "examples" and any unknown section
    heldout = [{"name": video_label(h["video_id"], names), "frames": f"{h.get('start', '?')}–{h.get('stop', '?')}"}
               for h in meta.get("heldout") or [] if isinstance(h, Mapping) and "video_id" in h]
    step = _evaluated_step(meta)
    return {
        "title": title,
        "written_at": written_at,
        "verdicts": [_sentence(v) for v in meta.get("verdicts") or []],
        "headline": headline,
        "paired": paired_table(protocols, names),
        "outlook": " ".join(meta.get("outlook") or []),
        "checkpoint": str(meta.get("checkpoint") or ""),
        "step": f" (step {step})" if step is not None else "",
        "heldout": heldout,
        "seeds": ", ".join(str(s) for s in meta.get("seeds") or []),
        "notes": list(meta.get("notes") or []),
        "warnings": list(meta.get("warnings") or []),
        "training": training,
        "sections": sections,
        "examples": examples,
        "appendix": json.dumps(meta, indent=2, default=_json_default) if meta else "",
    }
