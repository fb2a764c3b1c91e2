"""``evaluate`` metric modules shipped with mimkit, loaded by local path (nothing is fetched).

Each metric lives in ``<name>/<name>.py`` as an ``evaluate.Metric`` subclass, so anyone can
load it the way ``evaluate`` loads any local module::

    import evaluate
    from mimkit.metrics import metric_path
    top1 = evaluate.load(metric_path("top1_accuracy"))
    top1.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {"accuracy": 0.667, ...}
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def metrics_dir() -> Path:
    return Path(str(resources.files("mimkit.metrics")))


def available_metrics() -> list[str]:
    return sorted(p.name for p in metrics_dir().iterdir() if (p / f"{p.name}.py").is_file())


def metric_path(name: str) -> str:
    """The local directory of metric ``name``: the argument ``evaluate.load`` takes."""
    path = metrics_dir() / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"metric {name!r} is not shipped with mimkit; available: {', '.join(available_metrics())}")
    return str(path)
