"""Top-1 accuracy of class predictions, with the balanced (mean per-class) accuracy."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-1 accuracy of integer class predictions against integer references, as reported by
mimkit's evaluators (k-NN, leave-one-out 1-NN, linear probe, few-shot). Also returns the
balanced accuracy (recall averaged over the classes present in the references) and the
number of samples scored.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
Returns:
    accuracy (`float`): fraction of predictions equal to their reference, in [0, 1].
    balanced_accuracy (`float`): per-class recall averaged over the reference classes, in [0, 1].
    num_samples (`int`): how many pairs were scored.
Examples:
    >>> import evaluate
    >>> from mimkit.metrics import metric_path
    >>> top1 = evaluate.load(metric_path("top1_accuracy"))
    >>> top1.compute(predictions=[0, 1, 1, 2], references=[0, 1, 0, 2])["accuracy"]
    0.75
"""

_CITATION = ""


def _balanced(pred: np.ndarray, ref: np.ndarray) -> float:
    classes = np.unique(ref)
    if classes.size == 0:
        return 0.0
    return float(np.mean([np.mean(pred[ref == c] == c) for c in classes]))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Top1Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references) -> dict:
        pred = np.asarray(predictions, dtype=np.int64)
        ref = np.asarray(references, dtype=np.int64)
        n = int(ref.size)
        accuracy = float(np.mean(pred == ref)) if n else 0.0
        return {"accuracy": accuracy, "balanced_accuracy": _balanced(pred, ref), "num_samples": n}
