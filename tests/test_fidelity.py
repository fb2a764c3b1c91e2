"""The reference-fidelity switches, each against values computed by hand on small tensors."""

import itertools
import math

import pytest
import torch
from PIL import Image
from timm.layers import build_sincos2d_pos_embed

import mimkit
from mimkit.config import DataConfig, DecoderConfig, TrainConfig
from mimkit.data import eval_transform
from mimkit.encoder import sincos_positions
from mimkit.masking import draw_masks, max_offset
from mimkit.schedules import learning_rate
from mimkit.trainer import Plan, decays, lr_at, param_groups
from mimkit.objectives.decoders import build_decoder
from mimkit.objectives.losses import batch_mean_cosine, similarity_regularizer


# ----------------------------------------------------------------------------- schedule


def test_lr_floor_ratio_sets_warmup_start_and_cosine_end():
    peak, total, warm = 1.0, 20, 4
    # warm-up from 0.25 towards 1: step s gets 0.25 + 0.75 (s + 1) / 4
    assert [learning_rate(s, total, warm, peak, floor_ratio=0.25) for s in range(4)] == pytest.approx(
        [0.4375, 0.625, 0.8125, 1.0]
    )
    assert learning_rate(4, total, warm, peak, floor_ratio=0.25) == pytest.approx(1.0)
    assert learning_rate(12, total, warm, peak, floor_ratio=0.25) == pytest.approx(0.625)  # cosine midpoint
    assert learning_rate(20, total, warm, peak, floor_ratio=0.25) == pytest.approx(0.25)
    assert min(learning_rate(s, total, warm, peak, floor_ratio=0.25) for s in range(total)) >= 0.25


def test_min_warmup_cosine_is_the_smaller_curve():
    peak, total, warm = 1.0, 10, 4
    got = [learning_rate(s, total, warm, peak, shape="min_warmup_cosine") for s in range(total)]
    ramp = [(s + 1) / 4 for s in range(total)]
    cos = [0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(total)]
    assert got == pytest.approx([min(r, c) for r, c in zip(ramp, cos)])
    assert got[3] == pytest.approx(cos[3])  # at the end of warm-up the cosine has already dropped


def test_lr_per_epoch_holds_within_an_epoch():
    tr = TrainConfig(epochs=4, warmup_epochs=1, lr_per="epoch", lr_schedule="min_warmup_cosine")
    plan = Plan(micro_batch=8, steps_per_epoch=5, total_steps=20, warmup_steps=5, peak_lr=1.0)
    lrs = [lr_at(s, plan, tr) for s in range(20)]
    per_epoch = [min(e + 1, 0.5 * (1 + math.cos(math.pi * e / 4))) for e in range(4)]
    assert lrs == pytest.approx([v for v in per_epoch for _ in range(5)])


def test_a_per_epoch_hold_needs_whole_warmup_epochs():
    with pytest.raises(mimkit.ConfigError, match="train.warmup_epochs: 0.4 is not a whole number"):
        mimkit.load_config("pilamim", ["train.warmup_epochs=0.4"])
    assert mimkit.load_config("pilamim", ["train.warmup_epochs=0.4", "train.lr_per=step"]).train.warmup_epochs == 0.4


def test_the_micro_scale_ramps_pilamim_per_step():
    """pilamim holds its lr per epoch; over micro's few epochs that would skip the warm-up, so the overlay steps it."""
    assert mimkit.load_config("pilamim").train.lr_per == "epoch"
    tr = mimkit.load_config("pilamim+micro", ["train.epochs=4", "train.warmup_epochs=0.4"]).train
    plan = Plan(micro_batch=256, steps_per_epoch=175, total_steps=700, warmup_steps=70, peak_lr=1.0)
    lrs = [lr_at(s, plan, tr) for s in range(700)]
    assert lrs[0] == pytest.approx(1 / 70) and lrs[69] == pytest.approx(0.5 * (1 + math.cos(math.pi * 69 / 700)))
    assert all(a > b for a, b in itertools.pairwise(lrs[70:]))  # a strictly falling cosine, no stairs


def test_config_rejects_two_floors_and_bad_rules():
    with pytest.raises(mimkit.ConfigError, match="train.min_lr_ratio"):
        mimkit.load_config("mae+tiny", ["train.min_lr_ratio=1.0"])
    with pytest.raises(mimkit.ConfigError, match="set one floor"):
        mimkit.load_config("mae+tiny", ["train.min_lr_ratio=0.25", "train.min_lr=1e-6"])
    with pytest.raises(mimkit.ConfigError, match="train.no_decay"):
        mimkit.load_config("mae+tiny", ["train.no_decay=[biases]"])
    with pytest.raises(mimkit.ConfigError, match="cls_query"):
        mimkit.load_config("naive_latent_mim+tiny", ["objectives.latent.decoder.cls_query=true"])


# ----------------------------------------------------------------------------- similarity constraint


def test_batch_form_of_the_similarity_constraint_by_hand():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # cos: 1, 0, 0, 1 -> mean 1/2
    b = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # all 1 -> mean 1
    x = torch.cat([a, b])  # (2, 2, 2)
    assert batch_mean_cosine(x).item() == pytest.approx(0.75)
    vis = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])  # means 0 and 1 -> 1/2
    gamma = 0.25
    expected = (0.25 - 0.75) ** 2 + (0.25 - 0.5) ** 2
    assert similarity_regularizer(x, vis, gamma, "batch").item() == pytest.approx(expected)
    # the per-image form squares each image's off-diagonal mean: a -> 0, b -> 1; vis -> -1, 1
    per_image = ((0.25 - 0) ** 2 + (0.25 + 1) ** 2 + (0.25 - 1) ** 2 + (0.25 - 1) ** 2) / 2
    assert similarity_regularizer(x, vis, gamma, "per_image").item() == pytest.approx(per_image)


# ----------------------------------------------------------------------------- masking


def test_offsets_range():
    assert max_offset(4, "0..G") == 4 and max_offset(4, "0..G-1") == 3 and max_offset(0, "0..G-1") == 0
    torch.manual_seed(0)
    offsets, _, _ = draw_masks(64, 16, 4, 0.75, torch.device("cpu"), high=max_offset(4, "0..G-1"))
    assert offsets.min().item() == 0 and offsets.max().item() == 3
    offsets, _, _ = draw_masks(64, 16, 4, 0.75, torch.device("cpu"))
    assert offsets.max().item() == 4


def test_exclusive_offsets_keep_neighbouring_patches_apart():
    cfg = mimkit.load_config("latent_mim+tiny", ["masking.gap=2"])
    model = mimkit.build_model(cfg)
    assert cfg.masking.offsets == "0..G-1" and model.max_offset == 1
    g = model.geometry
    # each pixel's value is its column: patch p of cell c starts at column c * (P + G) + offset <= c * 6 + 1
    s = model.input_size
    images = torch.arange(s, dtype=torch.float32).expand(2, 3, s, s).contiguous()
    seen = []
    model.forward_split = lambda patches, *a, **k: seen.append(patches) or {}
    model(images)
    first_col = seen[0].view(2, g.num_cells, 3, g.patch, g.patch)[:, :, 0, 0, 0]  # (B, L)
    cell_left = (torch.arange(g.num_cells) % g.grid) * (g.patch + g.gap)
    assert ((first_col - cell_left) >= 0).all() and ((first_col - cell_left) <= 1).all()


# ----------------------------------------------------------------------------- positions


def test_sincos_index_coordinates_are_timms():
    torch.testing.assert_close(sincos_positions(5, 16), build_sincos2d_pos_embed([5, 5], dim=16))


def test_sincos_linspace_coordinates_by_hand():
    # grid 3, dim 4: one frequency (1), cells at 0, 1.5, 3; layout [sin y, sin x, cos y, cos x]
    pe = sincos_positions(3, 4, "linspace")
    assert pe.shape == (9, 4)
    y, x = 1.5, 3.0  # cell (row 1, column 2) = index 5
    torch.testing.assert_close(pe[5], torch.tensor([math.sin(y), math.sin(x), math.cos(y), math.cos(x)]))


def test_encoder_and_decoders_follow_sincos_coords():
    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny"))
    assert model.cfg.model.sincos_coords == "linspace"
    D = model.encoder.dim
    torch.testing.assert_close(model.encoder.vit.pos_embed[0, 1:], sincos_positions(8, D, "linspace"))
    dec = model.heads["latent"].decoder
    torch.testing.assert_close(dec.pos, sincos_positions(8, dec.pos.shape[1], "linspace"))


# ----------------------------------------------------------------------------- initialisation


def _xavier_bound(w: torch.Tensor) -> float:
    fan_out, fan_in = w.shape[0], w[0].numel()
    return math.sqrt(6 / (fan_in + fan_out))


def test_mae_init_is_xavier_uniform_everywhere():
    torch.manual_seed(0)
    cfg = mimkit.load_config("latent_mim+micro", ["objectives.latent.decoder.depth=1"])
    assert cfg.model.init == "mae"
    model = mimkit.build_model(cfg)
    vit = model.encoder.vit
    for name, w in [("qkv", vit.blocks[0].attn.qkv.weight), ("fc1", vit.blocks[0].mlp.fc1.weight),
                    ("patch", vit.patch_embed.proj.weight),  # (192, 3, 4, 4): a linear 48 -> 192
                    ("decoder", model.heads["latent"].decoder.blocks[0].mlp.fc1.weight),
                    ("projector", model.heads["latent"].projector[0].weight)]:
        bound = _xavier_bound(w)
        assert w.abs().max().item() <= bound + 1e-6, name
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name  # uniform(-a, a): std a / sqrt 3
    assert vit.blocks[0].attn.qkv.bias.abs().max().item() == 0
    assert vit.cls_token.std().item() == pytest.approx(0.02, rel=0.3)
    assert model.heads["latent"].decoder.mask_token.abs().max().item() == 0  # mask_token_init: zero


def test_timm_init_keeps_truncated_normal_heads():
    torch.manual_seed(0)
    cfg = mimkit.load_config("pilamim+micro", ["objectives.latent.decoder.depth=1", "objectives.pixel.decoder.depth=1"])
    assert cfg.model.init == "timm"
    model = mimkit.build_model(cfg)
    w = model.heads["latent"].decoder.blocks[0].mlp.fc1.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.05) and w.mean().abs().item() < 1e-3
    assert model.heads["latent"].decoder.mask_token.std().item() == pytest.approx(0.02, rel=0.3)


def test_random_target_init_gives_the_target_its_own_weights():
    same = mimkit.build_model(mimkit.load_config("latent_mim+tiny"))
    torch.testing.assert_close(same.target.own.vit.blocks[0].attn.qkv.weight, same.encoder.vit.blocks[0].attn.qkv.weight)
    rand = mimkit.build_model(mimkit.load_config("pilamim+tiny"))
    assert rand.cfg.init.target == "random"
    assert not torch.equal(rand.target.own.vit.blocks[0].attn.qkv.weight, rand.encoder.vit.blocks[0].attn.qkv.weight)


# ----------------------------------------------------------------------------- weight decay


def test_no_decay_rules_by_name():
    w2, w1 = torch.zeros(2, 2), torch.zeros(2)
    cls = torch.zeros(1, 1, 2)
    assert not decays("blocks.0.norm1.weight", w1, ["ndim1"])
    assert decays("encoder.vit.cls_token", cls, ["ndim1"])  # MAE decays the CLS token
    assert not decays("encoder.vit.cls_token", cls, ["ndim1", "tokens"])
    assert not decays("encoder.vit.patch_embed.proj.weight", w2, ["ndim1", "embed"])
    assert not decays("heads.latent.decoder.embed.weight", w2, ["embed"])
    assert decays("heads.latent.decoder.mask_token", cls, ["ndim1", "embed"])  # Latent MIM's code decays it
    assert decays("blocks.0.norm1.weight", w1, [])  # [] decays everything


def test_presets_weight_decay_groups():
    def exempt(preset):
        model = mimkit.build_model(mimkit.load_config(f"{preset}+tiny"))
        groups = param_groups(model, 0.05, model.cfg.train.no_decay)
        ids = {id(p) for p in groups[1]["params"]}
        return {n for n, p in model.named_parameters() if id(p) in ids}

    lmim = exempt("latent_mim")
    assert "encoder.vit.patch_embed.proj.weight" in lmim and "encoder.vit.cls_token" not in lmim
    assert "heads.latent.decoder.embed.weight" in lmim and "encoder.vit.blocks.0.norm1.weight" in lmim
    assert exempt("pilamim") == set()
    mae = exempt("mae")
    assert "encoder.vit.cls_token" not in mae and "encoder.vit.blocks.0.attn.qkv.bias" in mae


# ----------------------------------------------------------------------------- decoder and projector


def test_cls_query_takes_part_in_the_queries_self_attention():
    torch.manual_seed(0)
    cfg = DecoderConfig(kind="cross_attn", dim=16, depth=1, num_heads=2, visual_cues=True)
    plain = build_decoder(8, 8, cfg, grid=4)
    with_query = build_decoder(8, 8, DecoderConfig(**{**cfg.__dict__, "cls_query": True}), grid=4)
    with_query.load_state_dict(plain.state_dict(), strict=False)  # same weights, plus the query
    assert plain.cls_query is None and with_query.cls_query.shape == (1, 1, 16)
    memory = torch.randn(2, 1 + 3, 8)
    vis, tgt = torch.tensor([[0, 5, 9], [1, 2, 3]]), torch.tensor([[1, 2, 3, 4], [0, 5, 6, 7]])
    pred_plain, _ = plain(memory, vis, tgt, 1)
    pred_query, cls = with_query(memory, vis, tgt, 1)
    assert pred_query.shape == pred_plain.shape == (2, 4, 8) and cls.shape == (2, 8)
    assert not torch.allclose(pred_query, pred_plain)  # the extra query changes the self-attention
    torch.nn.init.zeros_(with_query.blocks[0].self_attn.proj.weight)  # no mixing among queries: no effect
    torch.nn.init.zeros_(plain.blocks[0].self_attn.proj.weight)
    torch.testing.assert_close(with_query(memory, vis, tgt, 1)[0], plain(memory, vis, tgt, 1)[0])


def test_decoder_block_switches():
    cfg = DecoderConfig(kind="self_attn", dim=16, depth=1, num_heads=2, qkv_bias=False, final_norm=False, pos_embed="learned")
    dec = build_decoder(8, 8, cfg, grid=4)
    assert dec.blocks[0].attn.qkv.bias is None
    assert isinstance(dec.norm, torch.nn.Identity)
    assert isinstance(dec.pos, torch.nn.Parameter) and dec.pos.requires_grad and dec.pos.shape == (16, 16)
    assert dec.pos.std().item() == pytest.approx(0.02, rel=0.3)
    cross = build_decoder(8, 8, DecoderConfig(kind="cross_attn", dim=16, depth=1, num_heads=2, qkv_bias=False), grid=4)
    assert cross.blocks[0].self_attn.qkv.bias is None and cross.blocks[0].cross_attn.kv.bias is None


def test_projector_without_bias():
    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny"))
    linears = [m for m in model.heads["latent"].projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(m.bias is None for m in linears)


# ----------------------------------------------------------------------------- evaluation transform


def test_eval_crop_resizes_then_centre_crops():
    img = Image.new("RGB", (64, 64))
    img.paste((255, 255, 255), (0, 0, 4, 64))  # a white 4-px band on the left edge
    cfg = DataConfig(mean=[0, 0, 0], std=[1, 1, 1])
    full = eval_transform(32, cfg)(img)  # 64 -> 32: the band is 2 px wide and stays
    assert full.shape == (3, 32, 32) and full[0, 16, 0] > 0.9
    cropped = eval_transform(32, DataConfig(mean=[0, 0, 0], std=[1, 1, 1], eval_crop=0.8))(img)  # 64 -> 40, crop 4 px a side
    assert cropped.shape == (3, 32, 32) and cropped[0, 16, 0] < 0.1  # the band was cropped away
