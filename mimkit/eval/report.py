"""Side-by-side reports of several evaluated runs: a markdown table, a CSV and a bar chart (PIL)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from .runs import VARIANT_ORDER

ACCURACY_KEYS = ("nn", "knn", "linear", "fewshot")
SIMILARITY_KEYS = ("sim", "sim_patches")
COLUMNS = ("nn", "knn", "linear", "fewshot", "fewshot_std", "sim", "sim_patches", "rank")

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
    head = "| run | variant | objectives | NN | k-NN | linear | few-shot | Sim | Sim (patches) | rank |"
    lines = [head, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        v = r.values
        fewshot = _fmt(v["fewshot"]) + (f" ± {v['fewshot_std']:.1f}" if v["fewshot"] is not None and v["fewshot_std"] is not None else "")
        cells = [
            r.label, r.variant, "+".join(r.objectives) or "–", _fmt(v["nn"]), _fmt(v["knn"]), _fmt(v["linear"]),
            fewshot, _fmt(v["sim"], 3), _fmt(v["sim_patches"], 3), _fmt(v["rank"]),
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


def _colours(rows: list[RunRow]) -> list[tuple[int, int, int]]:
    used: dict[str, int] = {}
    out = []
    for r in rows:
        family = _FAMILIES[r.variant]
        out.append(family[used.get(r.variant, 0) % len(family)])
        used[r.variant] = used.get(r.variant, 0) + 1
    return out


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_top(value: float, cap: float) -> float:
    """A round axis maximum a little above ``value`` (tens for percentages, tenths for cosines)."""
    step = 10.0 if cap > 1 else 0.1
    return min(cap, max(step, math.ceil(value * 1.15 / step) * step))


def _panel(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rows: list[RunRow], colours: list[tuple[int, int, int]],
    keys: tuple[str, ...], names: dict[str, str], cap: float, title: str, font: ImageFont.ImageFont, small: ImageFont.ImageFont,
) -> None:
    """Grouped bars: one group per metric key, one bar per run, value printed above each bar."""
    left, top, right, bottom = box
    values = [r.values[k] for r in rows for k in keys if r.values[k] is not None]
    y_max = _nice_top(max([v for v in values if v > 0], default=0.0), cap)
    draw.text((left, top - 26), title, fill=(0, 0, 0), font=font)
    step = y_max / 5
    for i in range(6):
        y = bottom - (bottom - top) * i / 5
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 6, y), f"{round(step * i, 6):g}", fill=(80, 80, 80), font=small, anchor="rm")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0))
    group_w = (right - left) / len(keys)
    bar_w = max(4.0, min(48.0, group_w * 0.8 / max(len(rows), 1)))
    for g, key in enumerate(keys):
        x0 = left + g * group_w + (group_w - bar_w * len(rows)) / 2
        for i, (r, colour) in enumerate(zip(rows, colours)):
            v = r.values[key]
            bx = x0 + i * bar_w
            if v is None:
                draw.text((bx + bar_w / 2, bottom - 4), "–", fill=(120, 120, 120), font=small, anchor="mb")
                continue
            h = (bottom - top) * max(0.0, min(v, y_max)) / y_max
            draw.rectangle([bx + 1, bottom - h, bx + bar_w - 1, bottom], fill=colour)
            std = r.values.get(f"{key}_std")
            if std:
                yl, yh = bottom - (bottom - top) * max(0.0, v - std) / y_max, bottom - (bottom - top) * min(v + std, y_max) / y_max
                cx = bx + bar_w / 2
                draw.line([(cx, yl), (cx, yh)], fill=(0, 0, 0))
                draw.line([(cx - 3, yh), (cx + 3, yh)], fill=(0, 0, 0))
            label_y = bottom - h - 3
            std = r.values.get(f"{key}_std")
            if std:
                label_y = min(label_y, bottom - (bottom - top) * min(v + std, y_max) / y_max - 3)
            text = f"{v:.1f}" if cap > 1 else f"{v:.2f}"
            draw.text((bx + bar_w / 2, label_y), text, fill=(30, 30, 30), font=small, anchor="mb")
        draw.text((left + (g + 0.5) * group_w, bottom + 8), names[key], fill=(0, 0, 0), font=font, anchor="mt")


def bar_chart(rows: list[RunRow], width: int | None = None) -> Image.Image:
    """Accuracy bars (NN, k-NN, linear, few-shot ± std) and similarity bars (Sim, Sim patches),
    runs side by side in each group, coloured by variant (pixel blue, latent orange, both green)."""
    if not rows:
        raise ValueError("bar chart: no runs")
    colours = _colours(rows)
    font, small = _font(15), _font(11)
    per_bar = 34 if len(rows) <= 6 else 22
    acc_w = max(520, len(ACCURACY_KEYS) * (len(rows) * per_bar + 30))
    sim_w = max(240, len(SIMILARITY_KEYS) * (len(rows) * per_bar + 30))
    width = width or 70 + acc_w + 90 + sim_w + 30
    legend_h = 24 * len(rows) + 16
    height = 380 + legend_h
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    plot_top, plot_bottom = 50, 320
    names = {"nn": "NN", "knn": "k-NN", "linear": "linear", "fewshot": "few-shot", "sim": "Sim", "sim_patches": "Sim (patches)"}
    _panel(draw, (70, plot_top, 70 + acc_w, plot_bottom), rows, colours, ACCURACY_KEYS, names, 100.0, "top-1 (%)", font, small)
    sx = 70 + acc_w + 90
    _panel(draw, (sx, plot_top, sx + sim_w, plot_bottom), rows, colours, SIMILARITY_KEYS, names, 1.0, "mean cosine similarity", font, small)
    y = plot_bottom + 44
    for r, colour in zip(rows, colours):
        draw.rectangle([70, y, 86, y + 14], fill=colour)
        text = r.label if r.variant in r.label else f"{r.label}  ({r.variant})"
        draw.text((94, y + 7), text, fill=(0, 0, 0), font=font, anchor="lm")
        y += 24
    return img
