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
