import dataclasses

import pytest

import mimkit
from mimkit.config import ConfigError, RunConfig, config_from_yaml, load_config, parse_override

from .conftest import PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_round_trip_through_yaml(preset, tmp_path):
    cfg = load_config(preset)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = config_from_yaml(path)
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_latent_mim_preset_is_the_papers_configuration():
    cfg = load_config("latent_mim")
    assert (cfg.masking.ratio, cfg.masking.gap) == (0.9, 4)
    assert cfg.target.mode == "ema" and cfg.target.momentum == [0.99, 1.0] and cfg.target.sees == "targets"
    lat = cfg.objectives.latent
    assert lat.loss == "patch_disc" and lat.tau == 0.2
    assert (lat.decoder.kind, lat.decoder.depth, lat.decoder.dim, lat.decoder.num_heads, lat.decoder.visual_cues) == (
        "cross_attn", 3, 512, 16, True)
    assert (lat.projector.kind, lat.projector.layers, lat.projector.hidden_dim) == ("mlp", 3, 4096)
    assert (lat.similarity.coef, lat.similarity.gamma) == (0.1, [0.75, 0.25])
    assert cfg.objectives.active() == ["latent"]


def test_preset_activity():
    assert load_config("mae").objectives.active() == ["pixel"]
    assert load_config("pilamim").objectives.active() == ["latent", "pixel", "cls"]
    naive = load_config("naive_latent_mim")
    assert naive.target.mode == "joint" and naive.objectives.latent.loss == "mse"
    assert naive.objectives.latent.projector.kind == "none" and naive.objectives.latent.decoder.kind == "self_attn"


def test_overrides_are_typed_and_dotted():
    cfg = load_config("latent_mim", ["masking.ratio=0.75", "target.momentum=[0.996, 1.0]", "train.max_steps=7",
                                     "objectives.latent.decoder.depth=2"])
    assert cfg.masking.ratio == 0.75 and cfg.target.momentum == [0.996, 1.0] and cfg.train.max_steps == 7
    assert cfg.objectives.latent.decoder.depth == 2
    # a partial override of a nested section keeps that section's other preset values
    assert cfg.objectives.latent.decoder.kind == "cross_attn" and cfg.objectives.latent.decoder.visual_cues
    assert parse_override("a.b=null") == {"a": {"b": None}}
    assert load_config("mae", ["train.base_lr=5e-4"]).train.base_lr == 5e-4  # YAML 1.1 reads this as a string


def test_stacked_presets_later_wins():
    cfg = load_config("latent_mim+tiny")
    assert cfg.model.embed_dim == 64 and cfg.masking.ratio == 0.9
    assert cfg.objectives.latent.decoder.dim == 64 and cfg.objectives.latent.decoder.kind == "cross_attn"


def test_unknown_key_names_path_and_closest_key():
    with pytest.raises(ConfigError, match=r"unknown config key masking\.ratoi; did you mean masking\.ratio"):
        load_config("latent_mim", ["masking.ratoi=0.5"])
    with pytest.raises(ConfigError, match=r"objectives\.latent\.decoder\.dept.*objectives\.latent\.decoder\.depth"):
        load_config("latent_mim", ["objectives.latent.decoder.dept=2"])


def test_wrong_type_or_value_names_key():
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer"):
        load_config("mae", ["train.batch_size=big"])
    with pytest.raises(ConfigError, match=r"target\.mode: 'emma' is not one of .*did you mean 'ema'"):
        load_config("latent_mim", ["target.mode=emma"])
    with pytest.raises(ConfigError, match=r"data\.hflip: expected true or false"):
        load_config("mae", ["data.hflip=1"])


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'latent_mim'"):
        load_config("latent_mimm")


def test_overlays_are_not_offered_as_presets():
    from mimkit.config import available_presets

    assert available_presets() == ["capi", "default", "latent_mim", "mae", "naive_latent_mim", "pilamim"]
    with pytest.raises(ConfigError) as err:
        load_config("nope")
    listed = str(err.value).split("shipped presets: ")[1].split(";")[0]
    assert listed == "capi, default, latent_mim, mae, naive_latent_mim, pilamim"
    assert "stack with +: micro, micro64, tiny" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        load_config("tinyy")


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["masking.ratio=1.0"], r"masking\.ratio"),
        (["objectives.latent.weight=0", "objectives.cls.weight=1"], r"objectives\.cls\.source"),
        (["target.mode=none"], r"target\.mode.*objectives\.latent"),
        (["objectives.latent.weight=0"], r"every head has weight 0"),
        (["train.batch_size=10", "train.grad_accum=3"], r"train\.batch_size.*train\.grad_accum"),
        (["objectives.latent.decoder.kind=self_attn"], r"visual_cues"),
        (["objectives.latent.decoder.dim=100"], r"objectives\.latent\.decoder\.dim.*num_heads"),
    ],
)
def test_impossible_combinations_are_rejected(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("latent_mim", overrides)


def test_geometry_errors_name_the_keys():
    with pytest.raises(ConfigError, match=r"data\.image_size: 224 is not a multiple of patch \+ masking\.gap = 16 \+ 4"):
        mimkit.build_model(load_config("latent_mim", ["data.image_size=224"]))
    with pytest.raises(ConfigError, match=r"masking\.ratio=0\.995 on 64 cells leaves 0 visible"):
        mimkit.build_model(load_config("mae+tiny", ["masking.ratio=0.995"]))
    with pytest.raises(ConfigError, match=r"model\.name"):
        mimkit.build_model(load_config("mae+tiny", ["model.name=resnet18"]))


def test_input_size_follows_grid_patch_and_gap():
    assert mimkit.build_model(load_config("latent_mim+tiny")).input_size == 8 * (4 + 4)
    assert mimkit.build_model(load_config("mae+tiny")).input_size == 32
    assert mimkit.build_model(load_config("mae+tiny", ["masking.gap=2", "data.image_size=48"])).input_size == 48


def test_schema_defaults_are_a_valid_config():
    assert isinstance(RunConfig().to_yaml(), str)
