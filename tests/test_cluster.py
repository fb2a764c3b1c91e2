"""The cluster head (CAPI): Sinkhorn-Knopp and the soft cross-entropy by hand, where gradients go,
the clustering module's own lr and loss, prototypes in use, one encoder pass beside other heads,
and exact resume with the clustering state."""

import math
import shutil

import pytest
import torch

from mimkit.config import ConfigError, load_config
from mimkit.masking import draw_masks, patchify
from mimkit.model import build_model
from mimkit.objectives.cluster import sinkhorn_knopp, soft_cross_entropy
from mimkit.trainer import param_groups

from .runs import TINY, read_log, run_train

CAPI_TINY = ["--preset", "capi+tiny", *TINY[2:]]


def test_sinkhorn_knopp_one_iteration_by_hand():
    m = torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    q = sinkhorn_knopp(m.log(), iters=1)
    # columns to 1/K: [1/6 1/6], [2/9 1/9], [1/9 2/9]; rows to 1/N, times N
    expected = torch.tensor([[1 / 3, 4 / 9, 2 / 9], [1 / 3, 2 / 9, 4 / 9]])
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(q.sum(1), torch.ones(2))  # each sample a distribution
    torch.testing.assert_close(q.sum(0), torch.full((3,), 2 / 3))  # each prototype N / K


def test_sinkhorn_balances_a_skewed_batch():
    logits = torch.randn(64, 8) + torch.tensor([4.0, 0, 0, 0, 0, 0, 0, 0])  # prototype 0 preferred by every sample
    q = sinkhorn_knopp(logits, iters=3)
    torch.testing.assert_close(q.sum(1), torch.ones(64))
    assert (q.sum(0) - 8).abs().max() < 0.5  # close to N / K = 8 each, where the softmax gives ~all to one


def test_sinkhorn_keeps_a_prototype_far_below_the_others():
    logits = torch.zeros(4, 3)
    logits[:, 2] = -200.0  # exp underflows to 0 against the largest logit: a column of zeros, 0 / 0 without a shift of its own
    q = sinkhorn_knopp(logits, iters=1)
    torch.testing.assert_close(q, torch.full((4, 3), 1 / 3))


def _sinkhorn_on_a_share(rank: int, world: int, port: int, logits: torch.Tensor, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    share = logits.shape[-2] // world
    torch.save(sinkhorn_knopp(logits[..., rank * share:(rank + 1) * share, :], iters=3), f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_sinkhorn_balances_over_the_batch_of_every_process(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logits = torch.randn(3, 16, 5) * 4  # (L, B, K): two processes hold 8 samples each
    torch.multiprocessing.spawn(_sinkhorn_on_a_share, args=(2, port, logits, str(tmp_path / "q")), nprocs=2)
    together = torch.cat([torch.load(tmp_path / f"q.{r}") for r in range(2)], dim=-2)
    torch.testing.assert_close(together, sinkhorn_knopp(logits, iters=3))  # the same as one process with the whole batch


def test_soft_cross_entropy_on_a_2x3_example_by_hand():
    logits = torch.tensor([[0.0, math.log(2), 0.0], [0.0, math.log(2), 0.0]])  # softmax [1/4, 1/2, 1/4]
    target = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    assert soft_cross_entropy(target, logits).item() == pytest.approx((math.log(2) + math.log(4)) / 2)


def _context(model, seed=0):
    g = model.geometry
    torch.manual_seed(seed)
    images = torch.randn(6, 3, g.input_size, g.input_size)
    _, visible, target = draw_masks(6, g.num_cells, 0, model.ratio, images.device)
    return model.context(patchify(images, g.patch), visible, target)


def test_the_student_loss_reaches_neither_teacher_nor_clustering_and_the_clustering_loss_only_the_clustering():
    model = build_model(load_config("capi+tiny"))
    head = model.heads["cluster"]
    ctx = _context(model)
    a, clustering_loss = head.assign(ctx.targets.every)
    assert not a.requires_grad
    cells = head.predicted_cells(ctx.target_idx)
    pred, _ = head.decoder(ctx.tokens, ctx.visible_idx, cells, ctx.num_prefix)
    logits = torch.nn.functional.linear(torch.nn.functional.normalize(pred, dim=-1), torch.nn.functional.normalize(head.prototypes, dim=-1))
    soft_cross_entropy(a.gather(1, cells[..., None].expand(-1, -1, a.shape[-1])), logits / 0.12).backward()
    assert head.clustering.weight.grad is None
    assert all(p.grad is None for p in model.target.own.parameters())
    assert model.encoder.vit.blocks[0].attn.qkv.weight.grad is not None and head.prototypes.grad is not None
    model.zero_grad(set_to_none=True)
    clustering_loss.backward()
    assert head.clustering.weight.grad is not None and head.clustering.weight.grad.abs().sum() > 0
    assert model.encoder.vit.blocks[0].attn.qkv.weight.grad is None and head.prototypes.grad is None


def test_the_clustering_module_trains_at_its_own_lr_without_weight_decay():
    model = build_model(load_config("capi+tiny"))
    groups = param_groups(model, 0.05, peak_lr=1e-3)
    own = [g for g in groups if "lr_scale" in g]
    assert len(own) == 1 and own[0]["lr_scale"] == pytest.approx(0.5) and own[0]["weight_decay"] == 0.0
    assert {id(p) for p in own[0]["params"]} == {id(p) for p in model.heads["cluster"].clustering.parameters()}
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])


def test_the_cluster_head_needs_a_full_view_ema_teacher():
    with pytest.raises(ConfigError, match="target.sees: full"):
        load_config("capi+tiny", ["target.sees=targets"])


def test_latent_and_cluster_heads_share_one_context_encoder_pass():
    model = build_model(load_config("capi+tiny", ["objectives.latent.weight=1.0"]))
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    g = model.geometry
    out = model(torch.randn(4, 3, g.input_size, g.input_size))
    assert {"latent/loss", "cluster/loss"} <= set(out) and len(calls) == 1


def test_a_tiny_capi_run_uses_many_prototypes_moves_the_clustering_and_resumes_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_train(*CAPI_TINY, "--output", str(full), "train.max_steps=6", "train.save_every=3") == 0
    records = {r["step"]: r for r in read_log(full) if "loss" in r}
    assert all(r["cluster/prototypes_used"] > 1 for r in records.values())
    assert all(0 <= r["cluster/agreement"] <= 1 and r["cluster/entropy"] > 0 for r in records.values())
    from safetensors.torch import load_file

    first, last = (load_file(full / "checkpoints" / f"step_0000000{s}" / "model.safetensors") for s in (3, 6))
    assert not torch.equal(first["heads.cluster.clustering.weight"], last["heads.cluster.clustering.weight"])
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000003", part / "checkpoints" / "step_00000003")
    assert run_train(*CAPI_TINY, "--output", str(part), "--resume", "train.max_steps=6", "train.save_every=3") == 0
    again = {r["step"]: r for r in read_log(part) if "loss" in r}
    for step in (4, 5, 6):
        assert again[step]["loss"] == pytest.approx(records[step]["loss"], rel=1e-5), step
        assert again[step]["cluster/clustering"] == pytest.approx(records[step]["cluster/clustering"], rel=1e-5), step


def test_sinkhorn_balances_each_grid_position_on_its_own():
    logits = torch.randn(5, 32, 4)  # (L, B, K)
    q = sinkhorn_knopp(logits, iters=3)
    for pos in range(5):
        torch.testing.assert_close(q[pos], sinkhorn_knopp(logits[pos], iters=3))
