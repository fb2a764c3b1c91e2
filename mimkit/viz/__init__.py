"""Pictures of what a run learned (``mimkit show``): pixel reconstructions, latent retrieval maps,
feature PCA maps and training curves, drawn with matplotlib (the ``viz`` extra)."""

from __future__ import annotations

from typing import Any


class VizError(ValueError):
    """A picture that cannot be drawn for this run; the message says why, in one line."""


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or a VizError saying how to install it."""
    try:
        import matplotlib
    except ImportError as e:
        raise VizError('pictures need matplotlib: pip install "mimkit[viz]"') from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
