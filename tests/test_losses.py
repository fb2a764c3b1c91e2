import math

import pytest
import torch

from mimkit.objectives.losses import (
    huber,
    l1,
    mean_pairwise_cosine,
    mse,
    norm_mse,
    patch_disc,
    reconstruction_loss,
    similarity_regularizer,
    standardize_patches,
)
from mimkit.objectives.pixel import normalize_patches

PRED = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
ZERO = torch.zeros(1, 2, 2)


def test_direct_losses_by_hand():
    assert mse(PRED, ZERO).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert l1(PRED, ZERO).item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    # delta 1.5: |e|=1 -> 0.5*1; 2 -> 1.5*(2-0.75); 3 -> 1.5*(3-0.75); 4 -> 1.5*(4-0.75)
    assert huber(PRED, ZERO, 1.5).item() == pytest.approx((0.5 + 1.875 + 3.375 + 4.875) / 4)
    p = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])
    assert norm_mse(p, t).item() == pytest.approx((0 + (2 - math.sqrt(2))) / 2)


def test_patch_disc_closed_form():
    # pred [2, 0] standardises to [+1, -1]/norm; targets [1, -1]: logits +-1/tau
    pred = torch.tensor([[[2.0], [0.0]]])
    target = torch.tensor([[[1.0], [-1.0]]])
    tau = 0.5
    assert patch_disc(pred, target, tau).item() == pytest.approx(2 * tau * math.log(1 + math.exp(-2 / tau)), rel=1e-5)


def _patch_disc_loops(pred, target, tau):
    B, N, D = pred.shape
    total = 0.0
    for b in range(B):
        cols = [[pred[b, n, d].item() for n in range(N)] for d in range(D)]
        means = [sum(c) / N for c in cols]
        stds = [math.sqrt(sum((v - m) ** 2 for v in c) / (N - 1)) for c, m in zip(cols, means)]
        p = [[(pred[b, n, d].item() - means[d]) / (stds[d] + 1e-4) for d in range(D)] for n in range(N)]
        t = [[target[b, n, d].item() for d in range(D)] for n in range(N)]
        unit = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]
        p, t = [unit(v) for v in p], [unit(v) for v in t]
        for k in range(N):
            logits = [sum(x * y for x, y in zip(p[k], t[l])) / tau for l in range(N)]
            total += -(logits[k] - math.log(sum(math.exp(z) for z in logits)))
    return 2 * tau * total / (B * N)


def test_patch_disc_matches_a_loop_implementation():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    assert patch_disc(pred, target, 0.2).item() == pytest.approx(_patch_disc_loops(pred, target, 0.2), rel=1e-5)


def test_patch_disc_near_minimum_for_exact_well_separated_predictions():
    target = torch.eye(16)[None].repeat(2, 1, 1) * 3.0  # 16 orthogonal targets per image
    tau = 0.2
    at_target = patch_disc(target.clone(), target, tau).item()
    shuffled = patch_disc(target[:, torch.randperm(16)], target, tau).item()
    # lower bound: logits can be at most 1/tau on the diagonal and -1/tau elsewhere
    floor = 2 * tau * math.log(1 + 15 * math.exp(-2 / tau))
    assert at_target < 0.05 and at_target >= floor - 1e-6
    assert shuffled > 1.0
    # no batch negatives: image 2's targets do not change image 1's loss
    alone = patch_disc(target[:1], target[:1], tau).item()
    assert alone == pytest.approx(at_target, rel=1e-6)


def test_standardize_patches():
    x = torch.tensor([[[1.0, 10.0], [3.0, 10.0]]])
    s = standardize_patches(x)
    std = math.sqrt(2)
    torch.testing.assert_close(s[0, :, 0], torch.tensor([-1 / (std + 1e-4), 1 / (std + 1e-4)]))
    assert torch.all(s[0, :, 1] == 0)


def test_mean_pairwise_cosine_by_hand():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    expected = (0 + 2 / math.sqrt(2)) / 3  # pairs: 0, 1/sqrt2, 1/sqrt2
    assert mean_pairwise_cosine(x).item() == pytest.approx(expected)
    assert mean_pairwise_cosine(torch.ones(2, 4, 3)).tolist() == pytest.approx([1.0, 1.0])


def test_similarity_regularizer_by_hand():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    vis = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    gamma = 0.5
    expected = (gamma - (2 / math.sqrt(2)) / 3) ** 2 + (gamma + 1) ** 2
    assert similarity_regularizer(pred, vis, gamma).item() == pytest.approx(expected)


def test_normalize_patches_like_mae_norm_pix():
    p = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    var = torch.tensor([1.0, 2.0, 3.0, 6.0]).var()
    torch.testing.assert_close(normalize_patches(p)[0, 0], (torch.tensor([1.0, 2.0, 3.0, 6.0]) - 3.0) / (var + 1e-6).sqrt())


def test_registry_rejects_unknown_loss():
    assert reconstruction_loss("l1")(PRED, ZERO).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="objectives.latent.loss"):
        reconstruction_loss("cosine")


def test_retrieval_top1_by_hand():
    # one image, 3 targets: standardised predictions 0 and 1 point at their own targets, 2 at target 0
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]])
    pred = torch.tensor([[[3.0, 0.0], [0.0, 3.0], [2.9, 0.5]]])
    # standardised over the 3 patches: column means (1.9667, 1.1667) -> rows point (+,-), (-,+), (+,-)
    from mimkit.objectives.losses import retrieval_top1

    assert retrieval_top1(pred, target).item() == pytest.approx(2 / 3)
    assert retrieval_top1(target, target).item() == 1.0
