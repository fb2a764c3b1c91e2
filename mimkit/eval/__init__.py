"""Evaluation of a frozen timm ViT encoder (functions take the model object).

Features (``features``)
    Pooling(kind="cls"|"mean"|"topk_mean", norm: bool = False, k: int = 10); NN_POOLING = Pooling("mean", norm=False)
    extract_features(vit, dataset, poolings=NN_POOLING, batch_size=256, num_workers=0,
                     accelerator=None, patch_similarity=False, amp=True) -> Features(pooled, labels, patch_sim, skipped)
    patch_tokens(vit, images, norm=False) -> (B, L, D);  pool(tokens, num_prefix, kind, k) -> (B, D)
    native_size(vit) -> int;  grid_size(vit) -> int

Nearest neighbours (``knn``), top-1 in percent
    nn_accuracy(vit, dataset, batch_size=256, accelerator=None, num_workers=0) -> float   # for the trainer
    nn_loo_accuracy(features, labels) -> float            # leave-one-out 1-NN within one split
    knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07) -> float
    knn_predict(queries, keys, key_labels, k, temperature, num_classes, exclude_self) -> (Q,)

Linear probe (``linear``) and few-shot (``fewshot``)
    linear_probe(train_x, train_y, test_x, test_y, LinearProbeConfig(epochs=90, optimizer="lars", ...))
        -> LinearProbeResult(top1, base_lr, val_top1)
    LARS(params, lr, weight_decay, momentum, eta);  fit_linear(...) -> ProbeHeads;  predict(probe, x) -> (K, N)
    few_shot(train_x, train_y, test_x, test_y, FewShotConfig(shots=16, seeds=(0,1,2), iterations=2500)) -> FewShotResult

Collapse diagnostics (``collapse``)
    pairwise_similarity(x) -> float;  within_image_similarity(tokens) -> float;  effective_rank(x) -> float

Segmentation (``segmentation``)
    agglomerative(x, n_clusters, linkage="ward"|"average") -> (L,) labels;  segment_tokens(tokens, grid, n) -> (g, g)
    overlay(image, labels) -> PIL image;  segmentation_rows(vit, images, mean, std, n_clusters, ...) -> rows of PIL images, titles

Everything at once (``suite``), checkpoints (``runs``), reports (``report``), scripts (``cli``)
    run_suite(vit, eval_data, train_data, SuiteConfig(...), accelerator=None) -> dict (nn, knn, linear, fewshot, sim, ..., meta)
    load_run(checkpoint, model=None) -> Run;  load_eval_data(DataConfig, image_size, max_train, max_eval) -> EvalData
    markdown_table / csv_text for mimkit compare (its chart: mimkit.viz.bars)

Accuracy goes through the ``evaluate`` metric shipped in ``mimkit/metrics`` (``scoring.top1``,
``scoring.load_metric``), loaded by local path.
"""

from .collapse import effective_rank, pairwise_similarity, within_image_similarity
from .features import NN_POOLING, Features, Pooling, extract_features, native_size, patch_tokens, pool
from .fewshot import FewShotConfig, FewShotResult, few_shot
from .knn import knn_accuracy, knn_predict, nn_accuracy, nn_loo_accuracy
from .linear import LARS, LinearProbeConfig, LinearProbeResult, linear_probe
from .suite import SuiteConfig, run_suite

__all__ = [
    "LARS",
    "NN_POOLING",
    "Features",
    "FewShotConfig",
    "FewShotResult",
    "LinearProbeConfig",
    "LinearProbeResult",
    "Pooling",
    "SuiteConfig",
    "effective_rank",
    "extract_features",
    "few_shot",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "native_size",
    "nn_accuracy",
    "nn_loo_accuracy",
    "pairwise_similarity",
    "patch_tokens",
    "pool",
    "run_suite",
    "within_image_similarity",
]
