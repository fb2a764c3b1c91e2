"""Evaluation protocols on synthetic features, checked against hand values and known limits."""

import math

import evaluate
import pytest
import torch

from mimkit.eval.collapse import effective_rank, pairwise_similarity, within_image_similarity
from mimkit.eval.features import Pooling, pool, topk_mean
from mimkit.eval.fewshot import FewShotConfig, few_shot, sample_per_class
from mimkit.eval.knn import knn_accuracy, knn_predict, nn_loo_accuracy
from mimkit.eval.linear import LARS, LinearProbeConfig, linear_probe
from mimkit.eval.scoring import load_metric, top1
from mimkit.eval.segmentation import agglomerative, colorize, overlay
from mimkit.metrics import available_metrics, metric_path


def blobs(n_per_class: int, classes: int = 5, dim: int = 16, noise: float = 0.15, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian clusters around fixed centres: x (classes * n, dim), y (classes * n,)."""
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)), dim=1) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + noise * torch.randn(len(y), dim, generator=g)
    return x, y


# --------------------------------------------------------------------------- pooling


def test_pooling_against_hand_values():
    tokens = torch.tensor([[[9.0, 9.0], [1.0, 4.0], [3.0, 0.0], [5.0, 2.0]]])  # (1, 1 CLS + 3 patches, 2)
    torch.testing.assert_close(pool(tokens, 1, "cls"), torch.tensor([[9.0, 9.0]]))
    torch.testing.assert_close(pool(tokens, 1, "mean"), torch.tensor([[3.0, 2.0]]))
    torch.testing.assert_close(pool(tokens, 1, "topk_mean", k=2), torch.tensor([[4.0, 3.0]]))  # (5+3)/2, (4+2)/2
    torch.testing.assert_close(topk_mean(tokens[:, 1:], k=10), torch.tensor([[3.0, 2.0]]))  # k > L: plain mean


def test_pooling_parse_and_names():
    assert Pooling.parse("mean") == Pooling("mean", norm=False)
    assert Pooling.parse("cls:post") == Pooling("cls", norm=True)
    assert Pooling.parse("topk_mean:pre", k=5).name == "top5_mean/prenorm"
    with pytest.raises(ValueError, match="not one of"):
        Pooling.parse("max")
    with pytest.raises(ValueError, match="'pre' or 'post'"):
        Pooling.parse("mean:after")


# --------------------------------------------------------------------------- nearest neighbours


def test_knn_separable_is_perfect_and_random_labels_are_chance():
    x_tr, y_tr = blobs(60)
    x_te, y_te = blobs(40, seed=1)
    assert knn_accuracy(x_tr, y_tr, x_te, y_te) == 100.0
    assert nn_loo_accuracy(x_te, y_te) == 100.0
    g = torch.Generator().manual_seed(2)
    x = torch.randn(600, 16, generator=g)
    y = torch.randint(0, 5, (600,), generator=g)
    assert knn_accuracy(x[:400], y[:400], x[400:], y[400:]) < 35.0
    assert nn_loo_accuracy(x, y) < 35.0


def test_leave_one_out_never_matches_an_image_with_itself():
    x, _ = blobs(1, classes=6)
    twins = torch.cat([x, x])  # each point appears twice, the copies labelled differently
    labels = torch.cat([torch.zeros(6), torch.ones(6)]).long()
    assert nn_loo_accuracy(twins, labels) == 0.0  # the nearest other row is always the twin
    distinct = torch.arange(6).repeat(2)  # now the twin carries the same label
    assert nn_loo_accuracy(twins, distinct) == 100.0


def test_knn_blocks_give_the_same_predictions_as_one_block():
    x, y = blobs(30, noise=1.5)
    q = torch.randn(50, 16)
    whole = knn_predict(q, x, y, k=7)
    assert torch.equal(knn_predict(q, x, y, k=7, max_elements=x.shape[0] * 3), whole)  # blocks of 3 queries
    loo = knn_predict(x, x, y, k=1, exclude_self=True)
    assert torch.equal(knn_predict(x, x, y, k=1, exclude_self=True, max_elements=x.shape[0] * 4), loo)


def test_knn_weights_votes_by_similarity():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_predict(query, keys, labels, k=1).item() == 0
    assert knn_predict(query, keys, labels, k=3, temperature=0.07).item() == 0  # one close vote beats two far ones
    assert knn_predict(query, keys, labels, k=3, temperature=100.0).item() == 1  # flat weights: majority


# --------------------------------------------------------------------------- linear probe and few-shot


def test_linear_probe_separable_and_random():
    x_tr, y_tr = blobs(80)
    x_te, y_te = blobs(40, seed=1)
    fast = LinearProbeConfig(epochs=30, batch_size=64, warmup_epochs=1)
    result = linear_probe(x_tr, y_tr, x_te, y_te, fast)
    assert result.top1 == 100.0
    assert result.base_lr in fast.base_lrs and set(result.val_top1) == set(fast.base_lrs)
    sgd = linear_probe(x_tr, y_tr, x_te, y_te, LinearProbeConfig(epochs=8, batch_size=64, optimizer="sgd", base_lrs=(0.1,)))
    assert sgd.top1 == 100.0 and sgd.val_top1 == {}
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 16, generator=g)
    y = torch.randint(0, 5, (600,), generator=g)
    assert linear_probe(x[:400], y[:400], x[400:], y[400:], fast).top1 < 35.0


def test_few_shot_separable_and_random():
    x_tr, y_tr = blobs(50)
    x_te, y_te = blobs(30, seed=1)
    cfg = FewShotConfig(shots=4, iterations=60, seeds=(0, 1, 2))
    res = few_shot(x_tr, y_tr, x_te, y_te, cfg)
    assert res.mean == 100.0 and res.std == 0.0 and len(res.runs) == 3
    g = torch.Generator().manual_seed(4)
    x = torch.randn(500, 16, generator=g)
    y = torch.randint(0, 5, (500,), generator=g)
    noisy = few_shot(x[:300], y[:300], x[300:], y[300:], cfg)
    assert noisy.mean < 35.0 and noisy.std >= 0.0


def test_few_shot_samples_per_class_and_depends_on_seed():
    y = torch.arange(4).repeat_interleave(10)
    idx = sample_per_class(y, shots=3, seed=0)
    assert torch.bincount(y[idx]).tolist() == [3, 3, 3, 3]
    assert not torch.equal(idx, sample_per_class(y, shots=3, seed=1))
    small = torch.tensor([0, 0, 1])
    assert torch.bincount(small[sample_per_class(small, shots=16, seed=0)]).tolist() == [2, 1]


def test_lars_scales_the_step_by_the_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=1.0, momentum=0.0, eta=0.1, weight_decay=0.0)
    w.grad, b.grad = torch.tensor([[0.0, 10.0]]), torch.tensor([2.0])  # ||g|| = 10
    opt.step()
    torch.testing.assert_close(w.data, torch.tensor([[3.0, 4.0 - 0.1 * 5 / 10 * 10]]))  # step = eta * ||w|| / ||g|| * g
    torch.testing.assert_close(b.data, torch.tensor([-1.0]))  # 1-D: plain SGD


# --------------------------------------------------------------------------- collapse diagnostics


def test_similarity_against_hand_values():
    assert pairwise_similarity(torch.tensor([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(0.0)
    assert pairwise_similarity(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])) == pytest.approx(1.0)
    # cos: (a,b)=1/sqrt2, (a,c)=0, (b,c)=1/sqrt2 -> mean of the three pairs
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert pairwise_similarity(x) == pytest.approx((2 / math.sqrt(2)) / 3)
    tokens = torch.stack([torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [-1.0, 0.0]])])  # (2, 2, 2)
    assert within_image_similarity(tokens) == pytest.approx(0.0)  # (1 + (-1)) / 2


def test_effective_rank_against_hand_values():
    assert effective_rank(torch.eye(4)) == pytest.approx(4.0)
    assert effective_rank(torch.ones(10, 3)) == pytest.approx(1.0)
    # singular values 3 and 1: p = (0.75, 0.25), exp(H)
    p = torch.tensor([0.75, 0.25])
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(float(torch.exp(-(p * p.log()).sum())))


# --------------------------------------------------------------------------- segmentation


@pytest.mark.parametrize("linkage", ["ward", "average"])
def test_agglomerative_recovers_separated_groups(linkage):
    x, y = blobs(7, classes=3, noise=0.05)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    labels = agglomerative(x[perm], 3, linkage)
    y = y[perm]
    assert labels[0] == 0 and set(labels.tolist()) == {0, 1, 2}
    for c in range(3):  # every true group lands in exactly one cluster
        assert len(set(labels[y == c].tolist())) == 1
    assert agglomerative(x, 1, linkage).unique().tolist() == [0]
    assert len(agglomerative(x, len(x), linkage).unique()) == len(x)
    with pytest.raises(ValueError, match="clusters"):
        agglomerative(x, 0, linkage)


def test_ward_merges_the_cheapest_pair_first():
    # on a line (normalised rows of 2-D points at angles 0, 10, 20, 90 degrees)
    angles = torch.tensor([0.0, 10.0, 20.0, 90.0]) * math.pi / 180
    x = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert agglomerative(x, 2, "ward").tolist() == [0, 0, 0, 1]


def test_overlay_paints_clusters_at_image_size():
    from PIL import Image

    labels = torch.tensor([[0, 1], [1, 0]]).numpy()
    img = Image.new("RGB", (40, 40), (0, 0, 0))
    out = overlay(img, labels, alpha=1.0)
    assert out.size == (40, 40)
    assert out.getpixel((5, 5)) == colorize(labels, 40).getpixel((5, 5)) != out.getpixel((30, 5))


# --------------------------------------------------------------------------- evaluate metric


def test_metric_loads_by_local_path_and_computes():
    assert "top1_accuracy" in available_metrics()
    metric = evaluate.load(metric_path("top1_accuracy"))
    out = metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 0, 2])
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert out["num_samples"] == 4
    assert top1(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0])) == 50.0
    assert load_metric("top1_accuracy") is load_metric("top1_accuracy")
    with pytest.raises(ValueError, match="not shipped"):
        metric_path("nope")
