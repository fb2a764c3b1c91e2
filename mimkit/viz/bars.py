"""The comparison chart of ``mimkit compare``: accuracy and similarity bars, runs side by side,
coloured by variant (pixel blue, latent orange, both green)."""

from __future__ import annotations

from pathlib import Path

from ..eval.report import ACCURACY_KEYS, SIMILARITY_KEYS, RunRow, colours
from . import pyplot

NAMES = {"nn": "NN", "knn": "k-NN", "linear": "linear", "fewshot": "few-shot", "finetune": "fine-tune", "sim": "Sim", "sim_patches": "Sim (patches)"}


def bar_chart(rows: list[RunRow], out: Path) -> Path:
    """Top-1 bars (NN, k-NN, linear, few-shot with its std) and similarity bars (Sim, Sim of
    patches); a missing number is a gap marked with a dash."""
    if not rows:
        raise ValueError("bar chart: no runs")
    plt = pyplot()
    fig, (acc, sim) = plt.subplots(1, 2, figsize=(4 + 1.2 * len(rows) * 2, 4.6), width_ratios=[2, 1], layout="constrained")
    for ax, keys, ylabel, fmt in ((acc, ACCURACY_KEYS, "top-1 (%)", "{:.1f}"), (sim, SIMILARITY_KEYS, "mean cosine similarity", "{:.2f}")):
        width = 0.8 / len(rows)
        for i, (r, colour) in enumerate(zip(rows, colours(rows))):
            xs = [g + (i - (len(rows) - 1) / 2) * width for g in range(len(keys))]
            values = [r.values.get(k) for k in keys]
            stds = [r.values.get(f"{k}_std") or 0.0 for k in keys]
            label = r.label if r.variant in r.label else f"{r.label} ({r.variant})"
            bars = ax.bar(xs, [v or 0.0 for v in values], width, yerr=stds if any(stds) else None, color=colour, label=label, capsize=3)
            ax.bar_label(bars, labels=["–" if v is None else fmt.format(v) for v in values], fontsize=7, padding=2)
        ax.set_xticks(range(len(keys)), [NAMES[k] for k in keys])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    acc.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.08), ncols=2, frameon=False)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
