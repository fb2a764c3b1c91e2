"""Side-by-side reports of several evaluated runs: a markdown table and a CSV (the bar chart: mimkit.viz.bars)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from .runs import VARIANT_ORDER

ACCURACY_KEYS = ("nn", "knn", "linear", "fewshot", "finetune")
SIMILARITY_KEYS = ("sim", "sim_patches")
COLUMNS = ("nn", "knn", "linear", "fewshot", "fewshot_std", "finetune", "sim", "sim_patches", "rank")

# a colour family per variant: pixel blue, latent orange, both green, unknown grey
_FAMILIES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "pixel": ((31, 119, 180), (96, 165, 214), (158, 202, 234), (20, 80, 130)),
    "latent": ((230, 115, 20), (245, 160, 75), (250, 200, 140), (170, 80, 10)),
    "pixel+latent": ((40, 150, 40), (100, 195, 100), (165, 225, 165), (25, 100, 25)),
    "other": ((110, 110, 110), (160, 160, 160), (200, 200, 200), (70, 70, 70)),
}


@dataclass
class RunRow:
    label: str
    variant: str  # one of VARIANT_ORDER
    preset: str | None
    objectives: list[str]
    source: str
    values: dict[str, float | None]


def row_from_metrics(metrics: dict, fallback_label: str) -> RunRow:
    """The numbers and the run description of one metrics dict (as mimkit evaluate writes it)."""
    run = (metrics.get("meta") or {}).get("run") or {}
    variant = run.get("variant") if run.get("variant") in VARIANT_ORDER else "other"
    return RunRow(
        label=run.get("label") or fallback_label,
        variant=variant,
        preset=run.get("preset"),
        objectives=list(run.get("objectives") or []),
        source=(metrics.get("meta") or {}).get("checkpoint") or fallback_label,
        values={k: _number(metrics.get(k)) for k in COLUMNS},
    )


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def arrange(rows: list[RunRow]) -> list[RunRow]:
    """Pixel, then latent, then pixel+latent variants (stable within a variant); labels made unique."""
    ordered = sorted(rows, key=lambda r: VARIANT_ORDER.index(r.variant))
    seen: dict[str, int] = {}
    for r in ordered:
        seen[r.label] = seen.get(r.label, 0) + 1
    counts: dict[str, int] = {}
    for r in ordered:
        if seen[r.label] > 1:
            counts[r.label] = counts.get(r.label, 0) + 1
            r.label = f"{r.label} #{counts[r.label]}"
    return ordered


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[RunRow]) -> str:
    """One row per run; the fine-tuning column only when some run was fine-tuned."""
    tuned = any(r.values["finetune"] is not None for r in rows)
    head = "| run | variant | objectives | NN | k-NN | linear | few-shot |" + (" fine-tune |" if tuned else "") + " Sim | Sim (patches) | rank |"
    lines = [head, "|---|---|---|--:|--:|--:|--:|" + ("--:|" if tuned else "") + "--:|--:|--:|"]
    for r in rows:
        v = r.values
        fewshot = _fmt(v["fewshot"]) + (f" ± {v['fewshot_std']:.1f}" if v["fewshot"] is not None and v["fewshot_std"] is not None else "")
        cells = [
            r.label, r.variant, "+".join(r.objectives) or "–", _fmt(v["nn"]), _fmt(v["knn"]), _fmt(v["linear"]), fewshot,
            *([_fmt(v["finetune"])] if tuned else []), _fmt(v["sim"], 3), _fmt(v["sim_patches"], 3), _fmt(v["rank"]),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[RunRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "variant", "preset", "objectives", "source", *COLUMNS])
    for r in rows:
        writer.writerow(
            [r.label, r.variant, r.preset or "", "+".join(r.objectives), r.source]
            + ["" if r.values[k] is None else f"{r.values[k]:.6g}" for k in COLUMNS]
        )
    return buf.getvalue()


def colours(rows: list[RunRow]) -> list[tuple[float, float, float]]:
    """One colour per run, from its variant's family, as matplotlib RGB in [0, 1]."""
    used: dict[str, int] = {}
    out = []
    for r in rows:
        family = _FAMILIES[r.variant]
        out.append(tuple(c / 255 for c in family[used.get(r.variant, 0) % len(family)]))
        used[r.variant] = used.get(r.variant, 0) + 1
    return out
