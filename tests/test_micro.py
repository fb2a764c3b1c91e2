"""The micro scale: one written rule resizes every preset; validation carved from train;
scoring the encoder at initialisation and at the end on the same images; the end message."""

import json

import datasets
import pytest
import torch

from mimkit.config import ConfigError, load_config
from mimkit.data import HOLDOUT_SPLIT, load_splits
from mimkit.eval.baselines import init_encoder, pixel_features
from mimkit.eval.features import NN_POOLING
from mimkit.model import build_model
from mimkit.scale import ScaleRule, apply_scale
from mimkit.summary import end_message

from .conftest import PRESETS
from .runs import TINY, read_log, run_train


def test_micro_encoder_is_192_wide_6_deep_on_an_8x8_grid():
    for overlay, (size, patch, gap) in {"micro": (32, 4, 1), "micro64": (64, 8, 2)}.items():
        cfg = load_config(f"latent_mim+{overlay}")
        m = cfg.model
        assert (m.embed_dim, m.depth, m.num_heads, m.img_size, m.patch_size) == (192, 6, 3, size, patch)
        assert cfg.masking.gap == gap  # the paper's 16:4 patch-to-gap proportion
        model = build_model(cfg)
        assert model.geometry.grid == 8 and model.input_size == 8 * (patch + gap)
        assert model.num_visible == 6  # 90% of 64 cells are targets


# (decoder dim, depth, heads) per head, projector hidden, gap: ViT-B/16 preset -> micro
EXPECTED = {
    "latent_mim": ({"latent": (128, 2, 4)}, 1024, 1),  # 512x3, 16 heads; 4096; gap 4
    "mae": ({"pixel": (128, 4, 4)}, None, 0),  # 512x8, 16 heads
    "pilamim": ({"latent": (96, 3, 3), "pixel": (96, 3, 3)}, None, 0),  # 384x6, 12 heads
    "naive_latent_mim": ({"latent": (128, 2, 4)}, None, 0),  # 512x3, 16 heads
}


@pytest.mark.parametrize("preset", PRESETS)
def test_the_rule_keeps_each_presets_proportions(preset):
    cfg = load_config(f"{preset}+micro")
    decoders, projector, gap = EXPECTED[preset]
    for head, expected in decoders.items():
        dec = getattr(cfg.objectives, head).decoder
        assert (dec.dim, dec.depth, dec.num_heads) == expected
        assert dec.dim // dec.num_heads == 32  # the presets' decoder head width is kept
    if projector is not None:
        assert cfg.objectives.latent.projector.hidden_dim == projector
    assert cfg.masking.gap == gap
    assert cfg.masking.ratio == load_config(preset).masking.ratio
    build_model(cfg)  # every scaled preset builds


def test_apply_scale_by_hand():
    cfg = load_config("pilamim", ["objectives.cls.source=context.cls", "objectives.cls.hidden_dim=2048", "masking.gap=6"])
    out = apply_scale(cfg, ScaleRule(width=0.5, depth=0.25, patch=0.5))
    dec = out.objectives.pixel.decoder  # 384 wide, 12 heads, 6 deep
    assert (dec.dim, dec.num_heads, dec.depth) == (192, 6, 2)  # depth 1.5 rounds half up
    assert out.objectives.cls.hidden_dim == 1024 and out.masking.gap == 3
    assert cfg.objectives.pixel.decoder.dim == 384  # the input is not modified


def test_overrides_apply_after_the_rule_and_bad_rules_are_named():
    cfg = load_config("latent_mim+micro", ["objectives.latent.decoder.depth=3", "masking.gap=0"])
    assert cfg.objectives.latent.decoder.depth == 3 and cfg.masking.gap == 0
    assert cfg.objectives.latent.decoder.dim == 128


def test_a_bad_scale_section_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale: {width: 0.5, depth: 0}\n")
    with pytest.raises(ConfigError, match="scale must be a mapping with exactly width, depth, patch"):
        load_config(f"latent_mim+{bad}")
    bad.write_text("scale: {width: 0.5, depth: -1, patch: 1}\n")
    with pytest.raises(ConfigError, match="scale.depth: -1 must be a positive number"):
        load_config(f"latent_mim+{bad}")


def test_resolved_micro_config_round_trips(tmp_path):
    from mimkit.config import config_from_yaml

    cfg = load_config("default")
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert config_from_yaml(path) == cfg


def test_holdout_is_carved_from_train_and_replaces_the_eval_split():
    cfg = load_config("latent_mim+tiny", ["data.holdout=300"]).data
    splits = load_splits(cfg)
    full = load_splits(load_config("latent_mim+tiny").data)
    assert splits.eval == HOLDOUT_SPLIT
    assert len(splits.data[HOLDOUT_SPLIT]) == 300
    assert len(splits.data["train"]) == len(full.data["train"]) - 300
    def encoded(split):  # the JPEG bytes of every image of a split
        return [x["bytes"] for x in split.cast_column("image", datasets.Image(decode=False))["image"]]

    held = encoded(splits.data[HOLDOUT_SPLIT])
    assert not set(encoded(splits.data["train"])).intersection(held)  # disjoint
    assert held == encoded(load_splits(cfg).data[HOLDOUT_SPLIT])  # seeded: the same images every time
    with pytest.raises(ConfigError, match="data.holdout: 99999 leaves no training image"):
        load_splits(load_config("latent_mim+tiny", ["data.holdout=99999"]).data)


def test_init_encoder_is_the_trainers_first_encoder(tmp_path):
    out = tmp_path / "run"
    assert run_train(*TINY, "--output", str(out), "train.max_steps=1", "train.eval_baseline=true",
                     "train.eval_knn_train=300") == 0
    from mimkit.config import config_from_yaml
    from mimkit.eval.monitor import build_monitor

    cfg = config_from_yaml(out / "config.yaml")
    summary = json.loads((out / "summary.json").read_text())
    vit = init_encoder(cfg)
    monitor = build_monitor(load_splits(cfg.data), cfg.data, 32, 300, 256)
    assert monitor.score(vit) == summary["init"]  # rebuilt encoder scores exactly what training measured
    assert summary["chance"] == 10.0 and summary["eval_images"] == 1000 and summary["knn_train_images"] == 300
    assert set(summary["init"]) == {"nn", "knn"} and summary["knn"] is not None
    evals = [r for r in read_log(out) if "eval/nn" in r]
    assert [(r["step"], r["eval/at"]) for r in evals] == [(0, "init"), (1, "end")]
    assert summary["nn_history"][0] == {"step": 0, "epoch": 0, "nn": summary["init"]["nn"]}
    start = next(r for r in read_log(out) if r.get("event") == "start")
    assert start["mixed_precision"] == summary["mixed_precision"] == "no"


def test_pixel_features_are_the_flattened_normalised_images():
    from mimkit.data import ImageDataset, eval_transform

    cfg = load_config("latent_mim+tiny").data
    splits = load_splits(cfg)
    tf = eval_transform(32, cfg)
    ds = ImageDataset(splits.data["test"].select(range(5)), splits.image_column, splits.label_column, tf)
    feats = pixel_features(ds, [NN_POOLING], batch_size=2)
    assert feats[NN_POOLING].shape == (5, 3 * 32 * 32)
    torch.testing.assert_close(feats[NN_POOLING][3], ds[3][0].flatten())
    assert feats.labels.tolist() == [ds[i][1] for i in range(5)]


def test_end_message_says_what_the_numbers_are():
    summary = {"preset": "default", "steps": 100, "epochs": 3.2, "images_seen": 12800, "nn": 27.25, "knn": 36.0,
               "init": {"nn": 17.5, "knn": 24.25}, "chance": 10.0, "eval_images": 1000, "knn_train_images": 4000}
    text = end_message(summary, "outputs/default", 125.0, "bf16")
    assert "2m05s (bf16 autocast)" in text and "chance 10.0" in text
    assert "  at initialisation    17.5   24.2" in text and "  after pretraining    27.2   36.0" in text
    assert "  gain                 +9.8  +11.8" in text
    assert "leave-one-out" in text and "4,000 training images" in text
    assert "outputs/default/" in text and "mimkit evaluate --checkpoint outputs/default" in text
