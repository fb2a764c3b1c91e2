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


@cuda
def test_compiled_step_matches_eager_under_inductor(monkeypatch):
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # eager's random numbers
    torch._dynamo.reset()
    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny")).cuda()
    images = torch.randn(8, 3, model.input_size, model.input_size, device="cuda")

    def loss() -> torch.Tensor:
        torch.manual_seed(1)
        return model(images, progress=0.5)["loss"]

    eager = loss()
    model.compile_step("model")
    torch.testing.assert_close(loss(), eager, rtol=1e-3, atol=1e-4)
    torch._dynamo.reset()


@cuda
def test_training_step_never_waits_for_the_gpu(tmp_path):
    """A bf16 optimizer step, from the pinned batch to the EMA update, makes no host sync."""
    from mimkit.config import load_config
    from mimkit.trainer import Trainer, make_accelerator

    from .runs import reset_accelerate

    cfg = load_config("latent_mim+tiny", ["train.batch_size=16", "data.num_workers=0", "train.trackers=[none]", "train.mixed_precision=bf16"])
    try:
        trainer = Trainer(cfg, make_accelerator(cfg, tmp_path), tmp_path)
        batches = iter(trainer.loader)
        assert trainer._micro_step(next(batches))  # first step: lazy optimizer state
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2):
                assert trainer._micro_step(next(batches))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        reset_accelerate()


@cuda
def test_train_py_with_the_compiled_step(tmp_path):
    assert run_train(*TINY, "--output", str(tmp_path / "run"), "train.max_steps=3", "train.compile=model") == 0
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3]
