"""A sheet of images in rows under column titles: the layout the reconstruction and segmentation
pictures share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import pyplot


def image_sheet(rows: Sequence[Sequence[Any]], titles: Sequence[str], out: Path, suptitle: str | None = None,
                cell: float = 2.0) -> Path:
    """rows of (H, W, 3) images (arrays in [0, 1] or uint8, PIL images), each ``cell`` inches wide,
    the column titles over the first row; written as a PNG at 100 dpi."""
    plt = pyplot()
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols, cell * len(rows) + 0.4), squeeze=False, layout="constrained")
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
            if r == 0 and c < len(titles):
                ax.set_title(titles[c], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
