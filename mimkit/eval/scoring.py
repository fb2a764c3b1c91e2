"""Accuracy through mimkit's own ``evaluate`` metric, loaded by local path (offline)."""

from __future__ import annotations

import importlib.util
import inspect
import logging
from functools import lru_cache
from pathlib import Path

import evaluate
from torch import Tensor

from ..metrics import metric_path

log = logging.getLogger(__name__)


def _import_directly(path: str) -> evaluate.EvaluationModule:
    """The metric class from its file, for when ``evaluate`` cannot copy it into its cache."""
    name = Path(path).name
    spec = importlib.util.spec_from_file_location(f"mimkit_metric_{name}", Path(path) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = next(
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, evaluate.EvaluationModule) and obj.__module__ == module.__name__
    )
    return cls(keep_in_memory=True)


@lru_cache(maxsize=None)
def load_metric(name: str = "top1_accuracy") -> evaluate.EvaluationModule:
    """``evaluate.load`` of a metric shipped in ``mimkit/metrics`` (a local path: no network).

    ``evaluate`` copies a local module into its modules cache; where that cache cannot be
    written the module is imported from the package directly instead.
    """
    path = metric_path(name)
    try:
        return evaluate.load(path, keep_in_memory=True)
    except OSError as e:
        log.warning("evaluate.load(%s) failed (%s); importing the metric module directly", path, e)
        return _import_directly(path)


def top1(predictions: Tensor, references: Tensor) -> float:
    """Top-1 accuracy in percent. predictions, references: (N,) class ids."""
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and references {tuple(references.shape)} differ in shape")
    if references.numel() == 0:
        raise ValueError("no samples to score")
    out = load_metric("top1_accuracy").compute(
        predictions=predictions.flatten().cpu().tolist(), references=references.flatten().cpu().tolist()
    )
    return 100.0 * out["accuracy"]
