import math

import torch
from torch import nn

from mimkit.config import DecoderConfig
from mimkit.encoder import sincos_positions
from mimkit.objectives.decoders import CrossAttention, CrossAttnDecoder, SelfAttnDecoder

GRID = 4  # 16 cells


def _inputs(B=2, Din=24, prefix=1):
    g = torch.Generator().manual_seed(0)
    vis = torch.stack([torch.randperm(16, generator=g)[:5] for _ in range(B)])  # (B, 5)
    rest = [sorted(set(range(16)) - set(v.tolist())) for v in vis]
    tgt = torch.tensor([r[:7] for r in rest])  # (B, 7)
    memory = torch.randn(B, prefix + 5, Din, generator=g)
    return memory, vis, tgt


def test_output_shapes_and_cls_slot():
    memory, vis, tgt = _inputs()
    for cls in (SelfAttnDecoder, CrossAttnDecoder):
        cfg = DecoderConfig(kind="self_attn", dim=32, depth=2, num_heads=4)
        dec = cls(24, 10, cfg, GRID, with_cls=True)
        pred, pred_cls = dec(memory, vis, tgt, 1)
        assert pred.shape == (2, 7, 10) and pred_cls.shape == (2, 10)
        pred2, none = cls(24, 10, cfg, GRID)(memory, vis, tgt, 1)
        assert none is None and pred2.shape == (2, 7, 10)


def test_visual_cue_queries_by_hand():
    memory, vis, tgt = _inputs()
    cfg = DecoderConfig(kind="cross_attn", dim=32, depth=1, num_heads=4, visual_cues=True)
    dec = CrossAttnDecoder(24, 32, cfg, GRID).eval()
    dec.blocks = nn.ModuleList()  # expose the initial queries: output = head(norm(q))
    dec.norm, dec.head = nn.Identity(), nn.Identity()
    pred, _ = dec(memory, vis, tgt, 1)
    pos = sincos_positions(GRID, 32)
    z = dec.embed(memory)[:, 1:]  # (B, Nv, 32) visible latents at decoder width
    for b in range(2):
        w = torch.softmax(pos[tgt[b]] @ pos[vis[b]].T / math.sqrt(32), dim=-1)  # (Nt, Nv)
        expected = dec.mask_token[0] + pos[tgt[b]] + w @ z[b]
        torch.testing.assert_close(pred[b], expected, rtol=1e-5, atol=1e-5)


def test_cross_attention_by_hand():
    att = CrossAttention(8, 2)
    x, mem = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    q = att.q(x).view(3, 2, 4).transpose(0, 1)
    k, v = att.kv(mem).view(5, 2, 2, 4).permute(1, 2, 0, 3)
    heads = torch.softmax(q @ k.transpose(1, 2) / 2.0, -1) @ v  # (2, 3, 4)
    torch.testing.assert_close(att(x, mem)[0], att.proj(heads.transpose(0, 1).reshape(3, 8)), rtol=1e-5, atol=1e-5)


def test_cross_decoder_ignores_visible_order_and_follows_target_order():
    memory, vis, tgt = _inputs()
    cfg = DecoderConfig(kind="cross_attn", dim=32, depth=2, num_heads=4, visual_cues=True)
    dec = CrossAttnDecoder(24, 6, cfg, GRID).eval()
    pred, _ = dec(memory, vis, tgt, 1)
    perm = torch.tensor([4, 2, 0, 1, 3])
    mem_p = torch.cat([memory[:, :1], memory[:, 1:][:, perm]], 1)
    pred_vp, _ = dec(mem_p, vis[:, perm], tgt, 1)
    torch.testing.assert_close(pred_vp, pred, rtol=1e-5, atol=1e-5)
    tperm = torch.tensor([6, 5, 4, 3, 2, 1, 0])
    pred_tp, _ = dec(memory, vis, tgt[:, tperm], 1)
    torch.testing.assert_close(pred_tp, pred[:, tperm], rtol=1e-5, atol=1e-5)
