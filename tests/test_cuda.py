"""The same model on a GPU in bf16 (skipped where there is no CUDA device)."""

import pytest
import torch

import mimkit

from .conftest import PRESETS
from .runs import TINY, losses, run_train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_forward_backward_in_bf16_on_cuda(preset):
    model = mimkit.build_model(mimkit.load_config(f"{preset}+tiny")).cuda()
    s = model.input_size
    images = torch.randn(8, 3, s, s, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(images, progress=0.5)
    out["loss"].backward()
    model.update_target(0.99)
    assert out["loss"].device.type == "cuda" and torch.isfinite(out["loss"])
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@cuda
def test_train_py_on_cuda_in_bf16(tmp_path):
    assert run_train(*TINY, "--output", str(tmp_path / "run"), "train.max_steps=3", "train.mixed_precision=bf16") == 0
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3]
