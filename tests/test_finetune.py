"""mimkit finetune: layer-decay groups by hand, mixup targets, a tiny fine-tune that learns,
exact resume, and a classifier timm loads with the same logits; from a run, an export, a timm file."""

import json
import shutil

import pytest
import safetensors.torch
import timm
import torch

from mimkit.finetune.config import FtModelConfig, load_finetune_config
from mimkit.finetune.model import build_classifier
from mimkit.finetune.trainer import layer_decay_optimizer
from mimkit.hub import save_pretrained

from .runs import cli_module, read_log, reset_accelerate


def tiny_vit(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return save_pretrained(tiny_vit(), tmp_path_factory.mktemp("enc") / "encoder")


def test_layer_decay_groups_by_hand(exported):
    model = build_classifier(str(exported), 10, FtModelConfig())
    cfg = load_finetune_config("micro", ["checkpoint=x", "optim.layer_decay=0.5"])
    opt = layer_decay_optimizer(model, cfg, lr=1.0)
    scale = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            scale[names[id(p)]] = (g["lr_scale"], g["weight_decay"])
    # 2 blocks: stem (patch embed, cls, positions) 0.5^3, block 0 0.5^2, block 1 0.5, head and its norm 1
    assert scale["patch_embed.proj.weight"] == (0.125, 0.05) and scale["cls_token"] == (0.125, 0.0)
    assert scale["blocks.0.attn.qkv.weight"] == (0.25, 0.05) and scale["blocks.0.norm1.weight"] == (0.25, 0.0)
    assert scale["blocks.1.mlp.fc2.weight"] == (0.5, 0.05)
    assert scale["head.weight"] == (1.0, 0.05) and scale["fc_norm.weight"] == (1.0, 0.0)


def test_mixup_targets_are_distributions():
    from timm.data import Mixup

    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    images, targets = mix(torch.randn(8, 3, 32, 32), torch.arange(8))
    assert targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))


def test_the_classifier_builds_from_a_run_an_export_and_a_timm_file(tmp_path, exported):
    enc = tiny_vit()
    run = tmp_path / "run"
    shutil.copytree(exported, run / "encoder")  # a training output dir holds encoder/
    for source in (run, exported):
        model = build_classifier(str(source), 7, FtModelConfig())
        assert model.head.out_features == 7 and isinstance(model.norm, torch.nn.Identity)
        torch.testing.assert_close(model.blocks[1].attn.qkv.weight, enc.blocks[1].attn.qkv.weight)
    cls = build_classifier(str(exported), 3, FtModelConfig(pool="cls"))
    torch.testing.assert_close(cls.norm.weight, enc.norm.weight)  # CLS pooling keeps the final norm
    # a plain timm state dict records no architecture: model.name gives it
    torch.manual_seed(1)
    standard = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    timm_file = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(standard.state_dict(), str(timm_file))
    model = build_classifier(str(timm_file), 5, FtModelConfig(name="vit_tiny_patch16_224"))
    torch.testing.assert_close(model.blocks[11].mlp.fc1.weight, standard.blocks[11].mlp.fc1.weight)


FAST = ["--data", "embedded", "optim.batch_size=32", "data.num_workers=0", "aug.auto_augment=null", "aug.reprob=0",
        "train.log_every=1", "train.trackers=[none]", "optim.warmup_epochs=0"]


def run_finetune(*args: str) -> int:
    try:
        return cli_module("finetune").main(list(args))
    finally:
        reset_accelerate()


def test_a_tiny_fine_tune_learns_resumes_exactly_and_exports_a_timm_classifier(tmp_path, exported, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    common = [*FAST, "--checkpoint", str(exported), "optim.max_steps=16", "train.save_every=8", "optim.base_lr=0.02",
              "aug.mixup=0", "aug.cutmix=0"]
    assert run_finetune(*common, "--output", str(full)) == 0
    losses = {r["step"]: r["loss"] for r in read_log(full) if "loss" in r}
    assert sorted(losses) == list(range(1, 17))
    assert sum(losses[s] for s in (14, 15, 16)) < sum(losses[s] for s in (1, 2, 3))  # the training loss goes down
    result = json.loads((full / "finetune.json").read_text())
    assert result["steps"] == 16 and 0 <= result["top1"] <= result["top5"] <= 100
    assert result["train_seconds"] > 0 and all(r["images_per_s"] > 0 for r in read_log(full) if "loss" in r)
    # resume from the step-8 checkpoint in another directory, from its saved finetune.yaml alone:
    # the same losses after it; a changed setting is refused in one line naming it
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000008", part / "checkpoints" / "step_00000008")
    shutil.copy(full / "finetune.yaml", part / "finetune.yaml")
    assert run_finetune("--output", str(part), "--resume", "optim.base_lr=0.01") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optim.base_lr (0.02 -> 0.01)" in err and str(part) in err
    assert run_finetune("--output", str(part), "--resume", "data.num_workers=0") == 0
    again = {r["step"]: r["loss"] for r in read_log(part) if "loss" in r}
    assert sorted(again) == list(range(9, 17))
    for step in again:
        assert again[step] == pytest.approx(losses[step], rel=1e-5), step
    # the exported classifier: plain timm, the same logits as the final checkpoint's weights
    timm_model = timm.create_model(f"local-dir:{full / 'classifier'}", pretrained=True).eval()
    ours = build_classifier(str(exported), 10, FtModelConfig())
    ours.load_state_dict(safetensors.torch.load_file(str(full / "checkpoints" / "step_00000016" / "model.safetensors")))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(timm_model(x), ours.eval()(x))


def test_mixup_run_and_a_missing_checkpoint(tmp_path, exported, capsys):
    assert run_finetune(*FAST, "--checkpoint", str(exported), "optim.max_steps=2", "--output", str(tmp_path / "m")) == 0
    assert run_finetune(*FAST, "--output", str(tmp_path / "n")) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_compare_shows_the_fine_tuning_column_only_when_a_run_has_one(tmp_path):
    from mimkit.cli.compare import finetune_top1
    from mimkit.eval.report import markdown_table, row_from_metrics

    run = tmp_path / "run"
    (run / "finetune-micro").mkdir(parents=True)
    assert finetune_top1(run) is None
    (run / "finetune-micro" / "finetune.json").write_text(json.dumps({"top1": 61.25, "top5": 95.0}))
    assert finetune_top1(run) == 61.25
    plain = row_from_metrics({"nn": 20.0}, "a")
    assert "fine-tune" not in markdown_table([plain])
    tuned = row_from_metrics({"nn": 21.0, "finetune": 61.25}, "b")
    table = markdown_table([plain, tuned])
    assert "| fine-tune |" in table.splitlines()[0] and "| 61.2 |" in table and "| – |" in table


def test_fine_tuning_a_run_writes_beside_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    assert load_finetune_config("micro", [f"checkpoint={run}"]).train.output_dir == str(run / "finetune-micro")
    assert load_finetune_config("micro", ["checkpoint=hf-hub:timm/x"]).train.output_dir == "outputs/finetune-micro"


def test_from_scratch_is_the_runs_encoder_before_its_first_step(tmp_path, exported):
    from mimkit.config import ConfigError, load_config
    from mimkit.eval.baselines import init_encoder

    cfg = load_config("mae+tiny")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.to_yaml())  # no weights: the init baseline's directory
    model = build_classifier(str(run), 4, FtModelConfig(from_scratch=True))
    start = init_encoder(cfg)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, start.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(model.pos_embed, start.pos_embed)
    assert model.head.out_features == 4
    assert load_finetune_config("micro", [f"checkpoint={run}", "model.from_scratch=true"]).train.output_dir == \
        str(run / "finetune-micro-scratch")
    with pytest.raises(ConfigError, match="model.from_scratch"):
        build_classifier(str(exported), 4, FtModelConfig(from_scratch=True))


def test_randaugment_at_full_magnitude_posterizes_to_black_instead_of_failing():
    import random

    import numpy as np
    from PIL import Image

    from mimkit.finetune.trainer import posterize, train_transform

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert np.asarray(posterize(img, 0)).max() == 0 and np.array_equal(np.asarray(posterize(img, 8)), np.asarray(img))
    # magnitude 10 without noise: the increasing posterize keeps 0 bits each time RandAugment draws it
    cfg = load_finetune_config("micro", ["checkpoint=x", "aug.auto_augment=rand-m10-n2-mstd0-inc1-p1.0"])
    transform = train_transform(32, cfg)
    random.seed(0)
    for _ in range(100):
        assert transform(img).shape == (3, 32, 32)
