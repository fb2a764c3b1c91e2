"""train.attention: the manual softmax(q k^T) v on a CPU under bf16, the fused kernel elsewhere."""

import json
import math

import pytest
import torch
from timm.layers import Attention

import mimkit
from mimkit.attention import apply_attention, attend, attention_modules, forward_only, resolve_attention, set_attention
from mimkit.objectives.decoders import CrossAttention, CrossAttnDecoder

from .runs import TINY, run_train


@pytest.mark.parametrize("precision, device, expected", [
    ("bf16", "cpu", "manual"), ("no", "cpu", "fused"), ("bf16", "cuda", "fused"), ("fp16", "cuda", "fused"), ("no", "cuda", "fused"),
])
def test_auto_is_manual_only_on_a_cpu_under_bf16(precision, device, expected):
    assert resolve_attention("auto", precision, device) == expected


def test_explicit_kernels_are_kept_and_unknown_ones_name_the_key():
    assert resolve_attention("fused", "bf16", "cpu") == "fused"
    assert resolve_attention("manual", "no", "cuda") == "manual"
    with pytest.raises(ValueError, match="train.attention"):
        resolve_attention("flash", "no", "cpu")


def test_manual_attention_matches_a_hand_computed_softmax():
    q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2, 2): two queries, d = 2
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)
    v = torch.tensor([[[1.0], [2.0], [4.0]]])  # (1, 3, 1)
    # query 0: scores (1, 0, 1) / sqrt 2; query 1: (0, 2, 2) / sqrt 2
    expected = []
    for scores in ([1.0, 0.0, 1.0], [0.0, 2.0, 2.0]):
        w = [math.exp(s / math.sqrt(2)) for s in scores]
        expected.append([sum(wi * vi for wi, vi in zip(w, (1.0, 2.0, 4.0))) / sum(w)])
    for fused in (False, True):
        torch.testing.assert_close(attend(q, k, v, fused), torch.tensor([expected]))


def test_set_attention_reaches_every_attention_module_and_keeps_the_loss():
    cfg = mimkit.load_config("latent_mim+tiny")
    torch.manual_seed(0)
    model = mimkit.build_model(cfg)
    kinds = (Attention, CrossAttention, CrossAttnDecoder)
    expected = sum(isinstance(m, kinds) for m in model.modules())
    assert expected >= 2 * cfg.model.depth + 2  # encoder, target encoder, decoder blocks, visual cues
    images = torch.randn(4, 3, model.input_size, model.input_size)
    results = {}
    for kernel in ("manual", "fused"):
        assert set_attention(model, kernel) == expected
        assert all(m.fused_attn is (kernel == "fused") for m in model.modules() if isinstance(m, kinds))
        torch.manual_seed(1)  # the same masks
        model.zero_grad()
        loss = model(images)["loss"]
        loss.backward()
        results[kernel] = (loss.detach(), model.encoder.vit.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(results["manual"], results["fused"], rtol=1e-4, atol=1e-5)


def test_a_run_trains_with_the_kernel_it_names(tmp_path):
    out = tmp_path / "run"
    assert run_train(*TINY, "--output", str(out), "train.max_steps=1", "train.attention=manual", "train.eval_baseline=false") == 0
    assert json.loads((out / "summary.json").read_text())["attention"] == "manual"


def test_auto_keeps_the_fused_kernel_in_gradient_free_modules():
    """Under auto on a CPU in bf16: manual where a backward runs, fused in the EMA target encoder."""
    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny"))
    context = attention_modules(model.encoder)
    target = attention_modules(model.target.own)
    assert context and target
    assert apply_attention(model, "auto", "bf16", "cpu") == "manual"
    assert not any(m.fused_attn for m in context) and all(m.fused_attn for m in target)
    assert apply_attention(model, "manual", "bf16", "cpu") == "manual"  # asked for by name: everywhere
    assert not any(m.fused_attn for m in attention_modules(model))


def test_forward_only_runs_fused_and_restores_each_kernel():
    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny"))
    apply_attention(model, "auto", "bf16", "cpu")
    before = [m.fused_attn for m in attention_modules(model)]
    assert False in before and True in before
    with forward_only(model):
        assert all(m.fused_attn for m in attention_modules(model))
    assert [m.fused_attn for m in attention_modules(model)] == before
