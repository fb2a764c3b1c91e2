import math

import pytest
import torch

import mimkit

from .conftest import PRESETS

EXPECTED_HEADS = {
    "latent_mim": ["latent"],
    "mae": ["pixel"],
    "pilamim": ["latent", "pixel", "cls"],
    "naive_latent_mim": ["latent"],
}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_forward_returns_weighted_total_and_statistics(preset):
    model = mimkit.build_model(mimkit.load_config(f"{preset}+tiny"))
    s = model.input_size
    out = model(torch.randn(4, 3, s, s), progress=0.3)
    assert list(model.heads) == EXPECTED_HEADS[preset]
    total = sum(model.weights[h] * out[f"{h}/loss"] for h in model.heads)
    torch.testing.assert_close(out["loss"], total)
    assert all(torch.isfinite(v).all() for v in out.values())
    if "latent" in model.heads:  # the collapse monitor is always reported
        for k in ("sim_pred", "sim_visible", "sim_target", "sim_images"):
            assert f"latent/{k}" in out
    assert (model.target is None) == (preset == "mae")


@pytest.mark.parametrize("preset", PRESETS)
def test_a_few_optimizer_steps_lower_the_loss(preset):
    torch.manual_seed(0)
    model = mimkit.build_model(mimkit.load_config(f"{preset}+tiny"))
    s = model.input_size
    images = torch.randn(8, 3, s, s)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for step in range(25):
        out = model(images, progress=step / 25)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.update_target(0.99)
        losses.append(out["loss"].item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first, (preset, losses)


def test_heads_with_zero_weight_are_not_built():
    model = mimkit.build_model(mimkit.load_config("pilamim+tiny", ["objectives.pixel.weight=0"]))
    assert list(model.heads) == ["latent", "cls"]
    model = mimkit.build_model(mimkit.load_config("mae+tiny", ["objectives.latent.weight=0.5", "target.mode=ema"]))
    assert list(model.heads) == ["latent", "pixel"] and model.weights == {"latent": 0.5, "pixel": 1.0}


def test_pixel_head_with_gap_reconstructs_the_jittered_patches():
    model = mimkit.build_model(mimkit.load_config("mae+tiny", ["masking.gap=2", "objectives.pixel.norm_pix=false"]))
    assert model.input_size == 8 * 6
    out = model(torch.randn(2, 3, 48, 48))
    assert math.isfinite(out["pixel/loss"].item())


def test_cls_head_from_context_cls():
    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny", ["objectives.cls.weight=0.5", "objectives.cls.source=context.cls"]))
    out = model(torch.randn(2, 3, model.input_size, model.input_size))
    assert "cls/loss" in out and model.heads["cls"].predictor is not None


def test_wrong_image_size_is_a_clear_error():
    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny"))
    with pytest.raises(ValueError, match="expects 64x64 images"):
        model(torch.randn(1, 3, 32, 32))


def test_bf16_autocast_on_cpu():
    model = mimkit.build_model(mimkit.load_config("pilamim+tiny"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, model.input_size, model.input_size))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32


def test_encoder_state_dict_loads_into_plain_timm():
    import timm

    cfg = mimkit.load_config("latent_mim+tiny")
    model = mimkit.build_model(cfg)
    vit = timm.create_model(cfg.model.name, img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    vit.load_state_dict(model.encoder_state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(vit.eval().forward_features(x), model.encoder.eval().forward_image(x))


def test_compiled_blocks_compute_the_same_losses():
    torch.manual_seed(0)
    cfg = mimkit.load_config("pilamim+tiny", ["objectives.latent.projector.kind=mlp"])
    model = mimkit.build_model(cfg)
    images = torch.randn(2, 3, model.input_size, model.input_size)
    torch.manual_seed(1)
    eager = model(images, progress=0.5)
    # context + EMA target blocks, two decoders' blocks, the latent head's online + EMA projectors
    assert model.compile_step("blocks", backend="eager") == 2 * 2 + 1 + 1 + 2
    torch.manual_seed(1)
    compiled = model(images, progress=0.5)
    for key in ("loss", "latent/loss", "pixel/loss", "cls/loss"):
        torch.testing.assert_close(compiled[key], eager[key])


def test_compiled_step_is_one_graph_that_never_recompiles():
    """compile_step("model") traced through AOTAutograd (inductor's code generation is left to
    the CUDA tests): eager's losses and gradients, one graph without breaks, and no
    recompilation as progress moves."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    cfg = mimkit.load_config("latent_mim+tiny", ["model.depth=1", "objectives.latent.decoder.depth=1", "objectives.latent.similarity.coef=0.1"])
    model = mimkit.build_model(cfg)
    images = torch.randn(2, 3, model.input_size, model.input_size)

    def run(progress: float) -> tuple[dict, list]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = model(images, progress=progress)
        out["loss"].backward()
        return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager, eager_grads = run(0.25)
    assert model.compile_step("model", backend="aot_eager") == 1
    compiled, compiled_grads = run(0.25)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    for key in ("loss", "latent/loss", "latent/gamma", "latent/sim_pred"):
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)
    assert len(compiled_grads) == len(eager_grads)
    for g_c, g_e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(g_c, g_e, rtol=1e-3, atol=1e-5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        later, _ = run(0.75)
    assert later["latent/gamma"].item() != compiled["latent/gamma"].item()  # progress reached the graph
    torch._dynamo.reset()
