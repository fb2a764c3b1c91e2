import math

import pytest
import torch

from mimkit.schedules import cosine_interp, interp, learning_rate, linear_interp, scaled_lr


def test_cosine_and_linear_endpoints_and_midpoints():
    assert cosine_interp(0.99, 1.0, 0.0) == pytest.approx(0.99)
    assert cosine_interp(0.99, 1.0, 1.0) == pytest.approx(1.0)
    assert cosine_interp(0.75, 0.25, 0.5) == pytest.approx(0.5)
    assert cosine_interp(0.75, 0.25, 0.25) == pytest.approx(0.25 + 0.5 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert linear_interp(0.996, 1.0, 0.5) == pytest.approx(0.998)
    assert interp("constant", 0.3, 0.9, 0.7) == 0.3
    assert cosine_interp(0.0, 1.0, 2.0) == pytest.approx(1.0)  # clamped


def test_learning_rate_warmup_then_cosine():
    peak, total, warm = 1e-3, 100, 10
    assert learning_rate(0, total, warm, peak) == pytest.approx(peak / 10)
    assert learning_rate(9, total, warm, peak) == pytest.approx(peak)
    assert learning_rate(10, total, warm, peak) == pytest.approx(peak)
    assert learning_rate(55, total, warm, peak) == pytest.approx(peak / 2)
    assert learning_rate(100, total, warm, peak, 1e-5) == pytest.approx(1e-5)
    assert learning_rate(0, total, 0, peak) == pytest.approx(peak)


def test_linear_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)


def test_cosine_interp_on_a_tensor_matches_the_float():
    for p in (-0.5, 0.0, 0.3, 0.5, 1.0, 2.0):
        got = cosine_interp(0.2, 0.9, torch.tensor(p))
        assert isinstance(got, torch.Tensor) and got.shape == ()
        assert got.item() == pytest.approx(cosine_interp(0.2, 0.9, p), abs=1e-6)
