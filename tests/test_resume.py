"""--resume reads the run's own config.yaml: operational keys may change, the run's length only
with --extend, anything else is refused with the keys named."""

import pytest

from mimkit.config import ConfigError, load_config
from mimkit.resume import resumed_config, run_dir_of

from .runs import TINY, read_log, run_train


def saved_run(tmp_path, *overrides: str):
    cfg = load_config("latent_mim+tiny", ["train.max_steps=10", *overrides])
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    return cfg


def test_resume_without_a_preset_takes_the_saved_config(tmp_path):
    saved = saved_run(tmp_path, "masking.ratio=0.6")
    cfg = resumed_config(tmp_path, None, ["train.log_every=1", "data.num_workers=0", "train.save_every=7"])
    assert cfg.preset == "latent_mim+tiny" and cfg.masking.ratio == 0.6 and cfg.model.embed_dim == saved.model.embed_dim
    assert (cfg.train.log_every, cfg.data.num_workers, cfg.train.save_every) == (1, 0, 7)
    assert cfg.train.output_dir == str(tmp_path)


def test_a_run_without_config_yaml_is_left_to_the_preset(tmp_path):
    assert resumed_config(tmp_path, None, []) is None


def test_changing_the_experiment_on_resume_is_refused_with_the_keys_named(tmp_path):
    saved_run(tmp_path)
    with pytest.raises(ConfigError) as e:
        resumed_config(tmp_path, None, ["masking.ratio=0.5", "train.base_lr=0.01"])
    msg = str(e.value)
    assert "masking.ratio (0.9 -> 0.5)" in msg and "train.base_lr" in msg and "another --output" in msg
    with pytest.raises(ConfigError, match="masking.ratio"):  # a preset given again must rebuild the saved config
        resumed_config(tmp_path, "mae+tiny", ["train.max_steps=10"])
    assert resumed_config(tmp_path, "latent_mim+tiny", ["train.max_steps=10"]) is not None


def test_the_length_changes_only_with_extend(tmp_path):
    saved_run(tmp_path)
    with pytest.raises(ConfigError, match=r"train.max_steps \(10 -> 20\); pass --extend"):
        resumed_config(tmp_path, None, ["train.max_steps=20"])
    assert resumed_config(tmp_path, None, ["train.max_steps=20"], extend=True).train.max_steps == 20
    with pytest.raises(ConfigError, match="train.warmup_epochs"):  # --extend is about the length only
        resumed_config(tmp_path, None, ["train.max_steps=20", "train.warmup_epochs=3"], extend=True)


def test_run_dir_of_a_resume():
    assert str(run_dir_of("latest", "out/x")) == "out/x"
    assert str(run_dir_of("out/y/checkpoints/step_00000004", None)) == "out/y"
    assert run_dir_of("latest", None) is None


def test_output_dir_defaults_to_one_per_preset():
    assert load_config("latent_mim+tiny").train.output_dir == "outputs/latent_mim+tiny"
    assert load_config("mae").train.output_dir == "outputs/mae"
    assert load_config("default").train.output_dir == "outputs/default"  # set by the preset itself


def test_a_finished_run_is_extended_without_repeating_its_preset(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(*TINY, "--output", str(out), "train.max_steps=3", "train.save_every=3", "train.eval_baseline=false") == 0
    capsys.readouterr()
    assert run_train("--output", str(out), "--resume", "train.max_steps=5") == 2
    assert "pass --extend" in capsys.readouterr().err
    assert run_train("--output", str(out), "--resume", "--extend", "train.max_steps=5") == 0
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1, 2, 3, 4, 5]
