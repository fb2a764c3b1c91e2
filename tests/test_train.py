"""mimkit train end to end on the embedded data (CPU): checkpoints, export, resume, 2 processes."""

import json
import shutil

import pytest
import timm
import torch
import yaml

from .runs import TINY, cli_module, losses, read_log, run_subprocess, run_train


def test_end_to_end_writes_log_checkpoint_and_timm_loadable_encoder(tmp_path):
    out = tmp_path / "run"
    assert run_train(*TINY, "--output", str(out), "train.max_steps=4", "train.save_every=2") == 0
    records = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss", "latent/loss", "lr", "momentum", "latent/sim_pred", "latent/sim_visible", "latent/sim_target"} <= set(records[0])
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000002", "step_00000004"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and 0.0 <= summary["nn"] <= 100.0
    # the export carries the run's own normalisation and crop (not timm's defaults for the name)
    exported = json.loads((out / "encoder" / "config.json").read_text())["pretrained_cfg"]
    data = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert (exported["mean"], exported["std"], exported["crop_pct"]) == (data["mean"], data["std"], data["eval_crop"])
    assert exported["mean"] != [0.5, 0.5, 0.5]
    # `mimkit push RUN --to DIR` writes the same export, loadable through timm's local-dir: convention
    assert cli_module("push").main([str(out), "--to", str(tmp_path / "pushed")]) == 0
    assert json.loads((tmp_path / "pushed" / "config.json").read_text())["pretrained_cfg"] == exported
    pushed = timm.create_model(f"local-dir:{tmp_path / 'pushed'}", pretrained=True)
    torch.testing.assert_close(pushed.blocks[0].attn.qkv.weight, timm.create_model(f"local-dir:{out / 'encoder'}", pretrained=True).blocks[0].attn.qkv.weight)
    # the exported encoder loads in plain timm and equals the trained context encoder
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=True, num_classes=0, img_size=32, patch_size=4, embed_dim=64, depth=2,
        num_heads=2, pretrained_cfg_overlay=dict(file=str(out / "encoder" / "model.safetensors")),
    )
    from safetensors.torch import load_file

    state = load_file(out / "checkpoints" / "step_00000004" / "model.safetensors")
    torch.testing.assert_close(vit.blocks[1].mlp.fc2.weight, state["encoder.vit.blocks.1.mlp.fc2.weight"])


def test_resume_continues_from_the_saved_step_with_the_same_losses(tmp_path):
    full = tmp_path / "full"
    assert run_train(*TINY, "--output", str(full), "train.max_steps=6", "train.save_every=3") == 0
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000003", part / "checkpoints" / "step_00000003")
    # `--resume` followed by overrides: the optional PATH is not taken for an override
    assert run_train(*TINY, "--output", str(part), "--resume", "train.max_steps=6", "train.save_every=3") == 0
    a = {r["step"]: r for r in read_log(full) if "loss" in r}
    b = {r["step"]: r for r in read_log(part) if "loss" in r}
    assert sorted(b) == [4, 5, 6]
    for step in (4, 5, 6):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=1e-6), step
        assert b[step]["lr"] == pytest.approx(a[step]["lr"])


def test_bad_config_is_reported_before_training(tmp_path, capsys):
    assert run_train(*TINY, "--output", str(tmp_path / "x"), "masking.ratoi=0.5") == 2
    assert "masking.ratio" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    common = [*TINY, "train.max_steps=3", "train.save_every=100"]
    one = run_subprocess(*common, "--output", str(tmp_path / "one"))
    two = run_subprocess(*common, "--output", str(tmp_path / "two"), processes=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    # same images, same crops, same masks per sample: equal up to float reduction order
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), (step, a, b)


def test_trackers_auto_is_silent_and_a_named_missing_tracker_warns(monkeypatch, caplog):
    from mimkit import trainer

    monkeypatch.setattr(trainer, "_installed", lambda name: name == "tensorboard")
    with caplog.at_level("WARNING", logger="mimkit"):
        assert trainer.resolve_trackers(["auto"]) == ["tensorboard"]
        assert trainer.resolve_trackers(["none"]) == []
    assert caplog.text == ""
    monkeypatch.setattr(trainer, "_installed", lambda name: False)
    with caplog.at_level("WARNING", logger="mimkit"):
        assert trainer.resolve_trackers(["auto"]) == []
        assert caplog.text == ""
        assert trainer.resolve_trackers(["wandb"]) == []
    assert "train.trackers: wandb is not installed" in caplog.text


def test_start_banner_says_what_the_run_will_do(tmp_path):
    from accelerate import Accelerator

    import mimkit
    from mimkit.trainer import Plan, start_banner

    cfg = mimkit.load_config("latent_mim+tiny")
    model = mimkit.build_model(cfg)
    plan = Plan(micro_batch=16, steps_per_epoch=625, total_steps=1250, warmup_steps=0, peak_lr=1e-3)
    text = start_banner(cfg, model, plan, 10000, "test", 1000, Accelerator(cpu=True), tmp_path)
    for expected in ("preset latent_mim+tiny; heads latent", "embedded: 10,000 train images; 1,000 test images",
                     "1,250 = 2 epochs x 625, batch 16", "6 of 64 cells visible", "cpu x 1, fp32", f"output  {tmp_path}"):
        assert expected in text, expected


def test_the_tail_after_the_last_step_says_what_it_does(tmp_path, caplog):
    with caplog.at_level("INFO", logger="mimkit"):
        assert run_train(*TINY, "train.max_steps=2", "train.eval_knn_train=64", "--output", str(tmp_path / "run")) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "mimkit"]
    tail = said[[i for i, m in enumerate(said) if m.startswith("preset latent_mim+tiny")][0] + 1:]
    assert tail == [
        "saving the final checkpoint",
        "scoring the encoder (end): NN on 1,000 images and k-NN from 64 train images",
        f"exporting the encoder to {tmp_path / 'run' / 'encoder'}",
    ]


def test_a_cpu_run_steps_with_the_fused_adamw_whose_first_update_is_computed_by_hand():
    """First AdamW step from zero moments: m_hat = g, v_hat = g^2, so each weight moves by
    -lr * (g / (|g| + eps) + wd * w) (decoupled decay); 1-D parameters are not decayed."""
    import mimkit
    from mimkit.trainer import default_adamw_impl, make_optimizer

    assert default_adamw_impl("cpu") == default_adamw_impl("cuda") == "fused"
    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny", []))
    lr, wd, eps = 1e-2, model.cfg.train.weight_decay, 1e-8
    opt = make_optimizer(model, model.cfg, lr, default_adamw_impl("cpu"))
    assert all(g["fused"] for g in opt.param_groups)
    weight, bias = model.encoder.vit.blocks[0].mlp.fc1.weight, model.encoder.vit.blocks[0].mlp.fc1.bias
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    images = torch.randn(4, 3, model.input_size, model.input_size)
    model(images)["loss"].backward()
    gw, gb = weight.grad.clone(), bias.grad.clone()
    opt.step()
    torch.testing.assert_close(weight.detach(), w0 - lr * (gw / (gw.abs() + eps) + wd * w0), rtol=0, atol=1e-6)
    torch.testing.assert_close(bias.detach(), b0 - lr * gb / (gb.abs() + eps), rtol=0, atol=1e-6)
