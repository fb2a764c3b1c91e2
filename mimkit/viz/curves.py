"""Training curves from ``log.jsonl``: the loss of each head, lr and momentum, the collapse monitor,
latent retrieval, NN during training and images/s; several runs overlay on the same axes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..jsonl import read_jsonl
from . import VizError, pyplot

# panel title -> (which keys it draws, y label)
PANELS: dict[str, tuple[str, str]] = {
    "loss": ("loss", "loss"),
    "lr and momentum": ("schedule", "lr (solid), momentum (dashed)"),
    "collapse monitor": ("latent/sim_", "mean cosine"),
    "latent retrieval top-1": ("latent/retrieval_top1", "share of cells"),
    "NN during training": ("eval/nn", "top-1 %"),
    "throughput": ("images_per_s", "images/s"),
}


def read_log(path: Path) -> list[dict[str, Any]]:
    """The step records of a ``log.jsonl`` (torn lines of a killed run skipped)."""
    if not path.is_file():
        raise VizError(f"curves: {path} does not exist")
    records = [r for r in read_jsonl(path) if "step" in r and "event" not in r]
    if not records:
        raise VizError(f"curves: {path} holds no logged steps")
    return records


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps = [r["step"] for r in records if r.get(key) is not None]
    return steps, [float(r[key]) for r in records if r.get(key) is not None]


def panel_keys(records: Sequence[dict[str, Any]], selector: str) -> list[str]:
    keys = sorted({k for r in records for k in r})
    if selector == "loss":
        return ["loss"] + [k for k in keys if k.endswith("/loss")]
    if selector == "schedule":
        return [k for k in ("lr", "momentum") if k in keys]
    return [k for k in keys if k.startswith(selector)]


def draw_curves(runs: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    """One figure: a panel per entry of PANELS that some run logged; run colours, key line styles."""
    plt = pyplot()
    present = [t for t, (sel, _) in PANELS.items() if any(panel_keys(recs, sel) for recs in runs.values())]
    cols = 3
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    styles = ["-", "--", ":", "-."]
    for ax, title in zip(axes.flat, present):
        sel, ylabel = PANELS[title]
        twin = ax.twinx() if sel == "schedule" else None
        for colour, (name, recs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10, runs.items()):
            for i, key in enumerate(panel_keys(recs, sel)):
                steps, values = series(recs, key)
                target = twin if (twin is not None and key == "momentum") else ax
                label = key if len(runs) == 1 else f"{name}: {key}"
                target.plot(steps, values, styles[i % len(styles)] if sel != "schedule" else ("-" if key == "lr" else "--"),
                            color=colour, label=label, linewidth=1.2, marker="o" if sel == "eval/nn" else None, markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel, fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:  # momentum lives on the right axis: one legend for both
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, fontsize=7)
        if title == "loss":
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
