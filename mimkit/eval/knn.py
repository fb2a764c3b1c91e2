"""Nearest-neighbour classification on L2-normalised features.

``nn_loo_accuracy``: the Latent MIM paper's "NN" — 1-nearest-neighbour, leave-one-out
within the evaluation split (an image is never its own neighbour).
``knn_accuracy``: the usual train -> test weighted k-NN (k=20, T=0.07; each of the k
neighbours votes for its label with weight exp(cos / T)).

Similarities are computed a block of queries at a time, so memory stays bounded
(``max_elements`` similarity entries per block) however large the splits are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor
from torch.utils.data import Dataset

from .features import NN_POOLING, extract_features
from .scoring import top1

DEFAULT_MAX_ELEMENTS = 1 << 26  # 64M similarities (256 MB in float32) per block


def _check_labelled(labels: Tensor, what: str) -> None:
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{what}: the dataset has no labels (label -1); set the label column")


@torch.no_grad()
def knn_predict(
    queries: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    exclude_self: bool = False,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Tensor:
    """Weighted k-NN votes by cosine similarity: queries (Q, D), keys (N, D) -> predictions (Q,).

    ``exclude_self``: queries and keys are the same rows; row i never counts as a
    neighbour of query i (other rows equal to it still do).
    """
    if queries.shape[-1] != keys.shape[-1]:
        raise ValueError(f"queries have {queries.shape[-1]} channels, keys {keys.shape[-1]}")
    if exclude_self and queries.shape[0] != keys.shape[0]:
        raise ValueError("exclude_self needs the queries to be the keys")
    n = keys.shape[0]
    k = min(k, n - 1 if exclude_self else n)
    if k < 1:
        raise ValueError(f"k-NN needs at least {2 if exclude_self else 1} reference rows, got {n}")
    num_classes = num_classes or int(key_labels.max()) + 1
    keys_t = F.normalize(keys.float(), dim=1).t()  # (D, N)
    key_labels = key_labels.to(keys.device)
    block = max(1, max_elements // max(n, 1))
    preds = []
    for start in range(0, queries.shape[0], block):
        q = F.normalize(queries[start:start + block].float().to(keys.device), dim=1)  # (b, D)
        sim = q @ keys_t  # (b, N)
        if exclude_self:
            rows = torch.arange(q.shape[0], device=sim.device)
            sim[rows, rows + start] = -torch.inf
        top_sim, top_idx = sim.topk(k, dim=1)  # (b, k)
        weights = (top_sim / temperature).exp()  # (b, k)
        votes = torch.zeros(q.shape[0], num_classes, device=sim.device)  # (b, C)
        votes.scatter_add_(1, key_labels[top_idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=keys.device)


def nn_loo_accuracy(features: Tensor, labels: Tensor, max_elements: int = DEFAULT_MAX_ELEMENTS) -> float:
    """Leave-one-out 1-NN top-1 (percent) within one split. features (N, D), labels (N,)."""
    _check_labelled(labels, "nn")
    pred = knn_predict(features, features, labels, k=1, exclude_self=True, max_elements=max_elements)
    return top1(pred, labels.to(pred.device))


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> float:
    """Weighted k-NN top-1 (percent) of the test rows against the train rows."""
    _check_labelled(train_labels, "knn train split")
    _check_labelled(test_labels, "knn eval split")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(
        test_features, train_features, train_labels, k=k, temperature=temperature, num_classes=num_classes, max_elements=max_elements
    )
    return top1(pred, test_labels.to(pred.device))


def nn_accuracy(
    vit: VisionTransformer,
    dataset: Dataset,
    batch_size: int = 256,
    accelerator: Accelerator | None = None,
    num_workers: int = 0,
) -> float:
    """The paper's NN top-1 (percent) of ``vit`` on ``dataset`` ((image, label) pairs at the
    encoder's native size, e.g. ``ImageDataset`` with ``eval_transform``): mean patch token
    before the final norm, L2-normalised, leave-one-out 1-NN. The same value on every process.
    """
    feats = extract_features(vit, dataset, NN_POOLING, batch_size=batch_size, num_workers=num_workers, accelerator=accelerator)
    if len(feats) < 2:
        raise ValueError(f"nn: {len(feats)} decodable images; leave-one-out needs at least 2")
    return nn_loo_accuracy(feats[NN_POOLING], feats.labels)
