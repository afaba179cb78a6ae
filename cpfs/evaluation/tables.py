"""The report's tables from a results dict (``cpfs.evaluation.report`` describes its shape): one per protocol
(a row per feature source, a column per metric, ``mean ± std``, with the glossary of its columns and rows) and
the paired comparisons (a row per protocol, comparison and held-out video, the difference and its CI), each a
``Table`` that the report's templates render, or Markdown (``markdown_table``).

Held-out videos are shown by name (``meta["heldout"][i]["name"]``: the file or folder ingested) as a ``Name``
carrying the content id for the small print; DAVIS sequences are names already.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from cpfs.evaluation import glossary

PROTOCOL_TITLES: dict[str, str] = {
    "linear_probe": "Linear probe (top-1 accuracy per layer)",
    "segmentation": "Semantic segmentation probe",
    "davis": "DAVIS label propagation (J, F)",
    "foreground": "DAVIS foreground/background probe (fitted on davis_train, mIoU per layer)",
    "flow_alignment": "Flow-kernel alignment on held-out video",
    "motion_segmentation": "Motion-segmentation probe on held-out video",
    "finetune": "Fine-tuning (trunk + new head; VOC 2007 mAP, or digits accuracy at smoke scale)",
}
SHORT_TITLES: dict[str, str] = {  # the headline figure's panel titles
    "flow_alignment": "Flow alignment", "motion_segmentation": "Motion segmentation", "davis": "DAVIS propagation",
    "foreground": "DAVIS foreground probe", "finetune": "Fine-tuning", "segmentation": "VOC segmentation",
    "linear_probe": "Linear probe",
}
POOLED: dict[str, str] = {"davis": "all sequences", "foreground": "all sequences", "finetune": "all test images"}
COMPARISONS: dict[str, str] = {  # result key of a paired comparison -> its series in the headline figure
    "paired": "trained − random init (same seed)",
    "paired_position": "trained − pixel position",
    "paired_random_layers": "trained − random init at its own best layers",
}


@dataclass(frozen=True)
class Name:
    """A thing shown by its name, with its content id in small print (and in full in a tooltip)."""

    text: str
    id: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]


Cell = str | Name


@dataclass(frozen=True)
class Table:
    """A table of the page with what its columns and rows mean."""

    key: str  # a protocol's name, or "paired": the HTML id
    title: str
    header: list[str]
    rows: list[list[Cell]]
    text_columns: int = 1  # leading columns of names; the rest are numbers (right-aligned)
    glossary: list[tuple[str, str]] = field(default_factory=list)  # (term, meaning) under the table
    notes: list[str] = field(default_factory=list)  # longer sentences under the glossary


def check_results(results: Mapping[str, Any]) -> Mapping[str, Mapping[str, Mapping[str, Any]]]:
    """``results["protocols"]``, checked to have the documented shape (ValueError naming what is wrong)."""
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


def protocol_table(proto: str, sources: Mapping[str, Mapping[str, Any]]) -> Table:
    """One protocol's table: a row per feature source, a column per metric (the union of the summaries', in
    first-seen order), ``mean ± std``, with the glossary of its columns and rows."""
    metrics: list[str] = []
    for res in sources.values():
        metrics += [m for m in res["summary"] if m not in metrics]
    rows: list[list[Cell]] = [[name] + [_cell(res["summary"].get(m)) for m in metrics] for name, res in sources.items()]
    return Table(proto, PROTOCOL_TITLES.get(proto, proto), ["source", *metrics], rows,
                 glossary=glossary.table_glossary(proto, metrics, sources), notes=glossary.table_notes(proto))


def video_names(meta: Mapping[str, Any]) -> dict[str, str]:
    """``{video_id: name}`` of the held-out videos recorded in ``meta["heldout"]`` (where a name is)."""
    return {h["video_id"]: h["name"] for h in meta.get("heldout") or [] if isinstance(h, Mapping) and h.get("name")}


def video_label(key: str, names: Mapping[str, str]) -> Name:
    """A held-out video by name with its id, or a DAVIS sequence (already a name) alone."""
    return Name(names[key], key) if key in names else Name(key)


def comparisons(protocols: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, str, str, Mapping[str, Any]]]:
    """``(protocol, source, result key, paired result)`` of every paired comparison, in report order."""
    for proto, sources in protocols.items():
        for name, src in sources.items():
            for key in COMPARISONS:
                p = src.get(key) if isinstance(src, Mapping) else None
                if isinstance(p, Mapping) and "ci_low" in p:
                    yield proto, name, key, p


def breakdown(proto: str, p: Mapping[str, Any], names: Mapping[str, str]) -> list[tuple[Name, Mapping[str, Any], bool]]:
    """The pooled estimate and each video's (one row when there is one video: it is the pooled estimate)."""
    per = dict(p.get("per_video") or {})
    if len(per) == 1:
        return [(video_label(next(iter(per)), names), p, True)]
    return [(Name(POOLED.get(proto, "all videos")), p, True)] + [(video_label(v, names), r, False) for v, r in per.items()]


def paired_table(protocols: Mapping[str, Mapping[str, Any]], names: Mapping[str, str] | None = None) -> Table | None:
    """The paired comparisons, a row per (protocol, comparison, video): the difference and its CI; None if none."""
    names = names or {}
    rows: list[list[Cell]] = []
    level = 0.95
    for proto, source, _, p in comparisons(protocols):
        level = float(p.get("level", level))
        comparison = f"{source} − {p.get('against', 'random init')}"
        for label, r, _ in breakdown(proto, p, names):
            rows.append([SHORT_TITLES.get(proto, proto), comparison, label, f"{r['mean']:+.3f}",
                         f"{r['ci_low']:+.3f} .. {r['ci_high']:+.3f}", str(r.get("n_pairs", ""))])
    if not rows:
        return None
    ci = f"{round(100 * level)} % CI"
    header = ["protocol", "comparison", "video", "difference", ci, "n"]
    terms = {"comparison": "comparison", "video": "video", "difference": "difference", ci: "CI", "n": "n"}
    return Table("paired", "Paired differences", header, rows, text_columns=3,
                 glossary=[(h, glossary.PAIRED_COLUMNS[k]) for h, k in terms.items()])


def markdown_table(table: Table) -> str:
    """A ``Table`` as a Markdown table (names with their short id as a subscript; ``|`` escaped)."""
    def cell(c: Cell) -> str:
        text = f"{c.text} <sub>{c.short_id}</sub>" if isinstance(c, Name) and c.id else (c.text if isinstance(c, Name) else c)
        return text.replace("|", r"\|")

    align = ["---"] * table.text_columns + ["---:"] * (len(table.header) - table.text_columns)
    lines = ["| " + " | ".join(cell(h) for h in table.header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def results_markdown_table(results: Mapping[str, Any]) -> str:
    """One Markdown table per protocol: a row per feature source, a column per metric, ``mean ± std``."""
    parts = [f"### {t.title}\n\n{markdown_table(t)}" for t in
             (protocol_table(p, s) for p, s in check_results(results).items() if s)]
    return "\n".join(parts)


def paired_markdown_table(protocols: Mapping[str, Mapping[str, Any]], names: Mapping[str, str] | None = None) -> str:
    """The paired comparisons as a Markdown table (empty string when there are none)."""
    table = paired_table(protocols, names)
    return markdown_table(table) if table is not None else ""
