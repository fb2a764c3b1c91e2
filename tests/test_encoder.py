import pytest
import timm
import torch

from mimkit.encoder import ContextEncoder
from mimkit.masking import patchify

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0)


@pytest.mark.parametrize(
    "name, extra",
    [
        ("vit_tiny_patch16_224", {}),
        ("vit_base_patch16_224", {"class_token": True, "no_embed_class": True}),  # deit-3 style positions
        ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "patch_size": 7}),  # register tokens
    ],
)
def test_full_image_path_equals_timm_forward_features(name, extra):
    vit = timm.create_model(name, pretrained=False, **{**TINY, **extra}).eval()
    enc = ContextEncoder(vit).eval()
    s = vit.patch_embed.img_size[0]
    x = torch.randn(3, 3, s, s)
    with torch.no_grad():
        ref = vit.forward_features(x)
        out = enc.forward_image(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_encode_subset_uses_each_cells_position():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).eval()
    enc = ContextEncoder(vit).eval()
    x = torch.randn(2, 3, 32, 32)
    patches = patchify(x, 4)  # (2, 64, 48)
    idx = torch.tensor([[5, 9, 63], [0, 7, 40]])
    with torch.no_grad():
        out = enc.encode(patches.gather(1, idx[..., None].expand(-1, -1, 48)), idx)  # (2, 4, 32)
        # by hand: conv patch embedding + the cell's position, CLS (+ its position) first
        emb = vit.patch_embed(x)  # (2, 64, 32)
        tok = torch.stack([emb[b, idx[b]] + vit.pos_embed[0, 1 + idx[b]] for b in range(2)])
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(2, -1, -1)
        ref = vit.norm(vit.blocks(torch.cat([cls, tok], 1)))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_depth_and_norm_options():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).eval()
    enc = ContextEncoder(vit).eval()
    p = torch.randn(1, 5, 48)
    idx = torch.arange(5)[None]
    with torch.no_grad():
        x0 = enc.embed(p, idx)
        torch.testing.assert_close(enc.encode(p, idx, depth=1, norm=False), vit.blocks[0](x0))
        torch.testing.assert_close(enc.encode(p, idx, depth=1), vit.norm(vit.blocks[0](x0)))


def test_grad_checkpointing_gives_the_same_gradients():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    a, b = ContextEncoder(vit), ContextEncoder(vit, grad_checkpointing=True)
    p, idx = torch.randn(2, 6, 48), torch.arange(6).expand(2, 6)
    grads = []
    for enc in (a, b):
        vit.zero_grad()
        enc.encode(p, idx).pow(2).sum().backward()
        grads.append(vit.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("extra", [{}, {"no_embed_class": True}])
def test_sincos_positions_are_fixed_sin_cos_of_the_cells(extra):
    from mimkit.encoder import fix_sincos_positions

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, **extra})
    assert fix_sincos_positions(vit, grid=8)  # the random table was replaced
    pe = vit.pos_embed[0]  # ([1 +] 64, 32)
    n = 0 if extra else 1
    assert not vit.pos_embed.requires_grad
    assert torch.equal(pe[:n], torch.zeros(n, 32))  # the CLS slot adds nothing
    cells = pe[n:]
    assert cells.shape == (64, 32) and cells.abs().max() <= 1
    # cell (0, 0): every sine is 0 and every cosine 1
    assert sorted(cells[0].tolist()) == [0.0] * 16 + [1.0] * 16
    assert torch.unique(cells, dim=0).shape[0] == 64  # every cell has its own code
    assert not fix_sincos_positions(vit, grid=8)  # already in place


def test_sincos_positions_stay_fixed_through_training():
    import mimkit
    from mimkit.trainer import make_optimizer

    for mode in ("ema", "standalone"):
        model = mimkit.build_model(mimkit.load_config("latent_mim+tiny", [f"target.mode={mode}"]))
        before = model.encoder.vit.pos_embed.detach().clone()
        opt = make_optimizer(model, model.cfg, 1e-2)
        images = torch.randn(4, 3, model.input_size, model.input_size)
        for _ in range(2):
            model(images)["loss"].backward()
            opt.step()
            opt.zero_grad()
            model.update_target(0.5)
        assert torch.equal(model.encoder.vit.pos_embed, before)
        assert torch.equal(model.target.own.vit.pos_embed, before)
        assert not model.target.own.vit.pos_embed.requires_grad
        assert model.target.own.vit.blocks[0].attn.qkv.weight.requires_grad == (mode == "standalone")


def test_learned_positions_are_trained():
    import mimkit

    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny", ["model.pos_embed=learned"]))
    assert model.encoder.vit.pos_embed.requires_grad
    images = torch.randn(4, 3, model.input_size, model.input_size)
    model(images)["loss"].backward()
    assert model.encoder.vit.pos_embed.grad.abs().sum() > 0
