import pytest
import torch

import mimkit
from mimkit.masking import random_split
from mimkit.target import TargetOutput, ema_


def _model(mode, extra=()):
    cfg = mimkit.load_config("latent_mim+tiny", [f"target.mode={mode}", *extra])
    return mimkit.build_model(cfg)


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.input_size
    images = torch.randn(3, 3, s, s, generator=g)
    return images


def _context_grads(model, images, detach_targets):
    """Gradients of the context encoder with one fixed mask; optionally with targets replaced
    by constants computed beforehand (what stop-gradient must be equivalent to)."""
    torch.manual_seed(1)
    g = model.geometry
    from mimkit.masking import grid_offsets, patchify

    patches = patchify(images, g.patch, g.gap, grid_offsets(images.shape[0], g.num_cells, g.gap, images.device))
    vis, tgt = random_split(images.shape[0], g.num_cells, model.ratio, images.device)
    model.zero_grad(set_to_none=True)
    original = model.target
    if detach_targets:
        fixed = original(model.encoder, patches, tgt)
        fixed = TargetOutput(fixed.tokens.detach(), fixed.cls.detach())

        class Const(torch.nn.Module):
            mode = original.mode

            def forward(self, *a):
                return fixed

        model.target = Const()
    try:
        model.forward_split(patches, vis, tgt)["loss"].backward()
    finally:
        model.target = original
    return {n: p.grad.clone() for n, p in model.encoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["ema", "stopgrad", "standalone"])
def test_no_gradient_reaches_the_context_encoder_through_the_target_path(mode):
    model = _model(mode)
    images = _batch(model)
    full = _context_grads(model, images, detach_targets=False)
    const = _context_grads(model, images, detach_targets=True)
    assert full.keys() == const.keys() and len(full) > 0
    for n in full:
        torch.testing.assert_close(full[n], const[n], msg=n)


def test_joint_mode_sends_gradient_through_both_paths():
    model = _model("joint", ["objectives.latent.loss=mse", "objectives.latent.projector.kind=none"])
    images = _batch(model)
    full = _context_grads(model, images, detach_targets=False)
    const = _context_grads(model, images, detach_targets=True)
    diff = max((full[n] - const[n]).abs().max().item() for n in full)
    assert diff > 1e-6


def test_which_weights_the_target_path_trains():
    for mode, expect_grad in (("ema", False), ("standalone", True)):
        model = _model(mode)
        model(_batch(model))["loss"].backward()
        own = list(model.target.own.parameters())
        proj = list(model.heads["latent"].target_projector.parameters())
        if expect_grad:  # every trainable weight; the fixed sin-cos positions stay fixed
            assert all(p.grad is not None for p in own + proj if p.requires_grad)
            assert [n for n, p in model.target.own.named_parameters() if not p.requires_grad] == ["vit.pos_embed"]
            assert any(p.grad.abs().sum() > 0 for p in own if p.requires_grad)
        else:
            assert all(not p.requires_grad and p.grad is None for p in own + proj)
    for mode in ("stopgrad", "joint"):
        model = _model(mode)
        assert model.target.own is None and model.heads["latent"].target_projector is None


def test_ema_arithmetic_by_hand():
    online, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        target.weight.copy_(torch.tensor([[3.0, -1.0]]))
        online.bias.fill_(0.5)
        target.bias.fill_(1.5)
    ema_(target, online, 0.9)
    torch.testing.assert_close(target.weight, torch.tensor([[0.9 * 3 + 0.1 * 1, 0.9 * -1 + 0.1 * 2]]))
    torch.testing.assert_close(target.bias, torch.tensor([0.9 * 1.5 + 0.1 * 0.5]))


def test_model_update_target_moves_encoder_and_projector():
    model = _model("ema")
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
        for p in model.heads["latent"].projector.parameters():
            p.add_(1.0)
    t0 = model.target.own.vit.blocks[0].mlp.fc1.weight.clone()
    o = model.encoder.vit.blocks[0].mlp.fc1.weight
    pt0 = model.heads["latent"].target_projector[0].weight.clone()
    po = model.heads["latent"].projector[0].weight
    model.update_target(0.75)
    torch.testing.assert_close(model.target.own.vit.blocks[0].mlp.fc1.weight, 0.75 * t0 + 0.25 * o)
    torch.testing.assert_close(model.heads["latent"].target_projector[0].weight, 0.75 * pt0 + 0.25 * po)
    assert model.momentum(0.0) == pytest.approx(0.99) and model.momentum(1.0) == pytest.approx(1.0)


def test_target_depth_and_sees():
    model = _model("stopgrad", ["target.depth=1", "target.sees=full"])
    images = _batch(model)
    g = model.geometry
    from mimkit.masking import grid_offsets, patchify

    patches = patchify(images, g.patch, g.gap, grid_offsets(3, g.num_cells, g.gap, images.device))
    vis, tgt = random_split(3, g.num_cells, model.ratio, images.device)
    out = model.target(model.encoder, patches, tgt)
    all_idx = torch.arange(g.num_cells).expand(3, -1)
    ref = model.encoder.encode(patches, all_idx, depth=1)
    torch.testing.assert_close(out.tokens, ref[:, 1:].gather(1, tgt[..., None].expand(-1, -1, ref.shape[-1])))
    torch.testing.assert_close(out.cls, ref[:, 0])
    with pytest.raises(mimkit.ConfigError, match="target.depth: 5 exceeds"):
        _model("ema", ["target.depth=5"])
