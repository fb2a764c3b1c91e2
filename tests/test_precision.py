"""train.mixed_precision: auto -> bf16 where the hardware multiplies bf16 natively, else fp32."""

import pytest
import torch

from mimkit import precision
from mimkit.config import load_config
from mimkit.eval import features


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_on_a_cpu_follows_its_bf16_capability(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_on_a_gpu_follows_its_bf16_capability(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda: native)
    assert precision.resolve_precision("auto", "cuda") == expected


@pytest.mark.parametrize("native", [True, False])
def test_explicit_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog, native):
    from mimkit.trainer import make_accelerator

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.bf16_is_emulated("bf16", "cpu") is (not native)
    assert not precision.bf16_is_emulated("no", "cpu") and not precision.bf16_is_emulated("bf16", "cuda")
    if torch.cuda.is_available():
        return
    cfg = load_config("mae+tiny", ["train.mixed_precision=bf16", "train.trackers=[none]"])
    with caplog.at_level("WARNING", logger="mimkit"):
        make_accelerator(cfg, "unused")
    assert ("bf16 is emulated" in caplog.text) is (not native)


def test_explicit_choices_are_kept_and_fp16_needs_cuda():
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    assert precision.resolve_precision("no", "cuda") == "no"
    assert precision.resolve_precision("fp16", "cuda") == "fp16"
    assert precision.resolve_precision("fp16", "cpu") == "no"
    assert precision.resolve_precision("auto", "mps") == "no"


@pytest.mark.parametrize("answer", [True, False])
def test_cpu_capability_is_torchs_query_when_it_has_one(monkeypatch, answer):
    monkeypatch.setattr(precision, "_torch_cpu_query", lambda: answer)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: {"avx512_bf16"} if not answer else set())
    assert precision.cpu_has_native_bf16() is answer


@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True),
                                             ({"avx2", "avx512f"}, False), (set(), False)])
def test_cpu_capability_falls_back_to_the_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "_torch_cpu_query", lambda: None)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: flags)
    assert precision.cpu_has_native_bf16() is expected


def test_cpuinfo_flags_are_read_from_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512_bf16 amx_tile\n")
    assert precision._cpuinfo_flags(info) == {"fpu", "avx512_bf16", "amx_tile"}
    assert precision._cpuinfo_flags(tmp_path / "missing") == set()


def test_presets_default_to_auto_and_tiny_stays_fp32():
    assert load_config("latent_mim").train.mixed_precision == "auto"
    assert load_config("latent_mim+micro").train.mixed_precision == "auto"
    assert load_config("latent_mim+tiny").train.mixed_precision == "no"


@pytest.mark.parametrize("native", [True, False])
def test_feature_extraction_uses_the_same_rule(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    with features._autocast(torch.device("cpu"), amp=True):
        assert torch.is_autocast_enabled("cpu") is native
        if native:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with features._autocast(torch.device("cpu"), amp=False):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_the_trainers_accelerator_gets_the_resolved_precision(monkeypatch, native, expected):
    from mimkit.trainer import make_accelerator

    from .runs import reset_accelerate

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config("latent_mim+tiny", ["train.mixed_precision=auto", "train.trackers=[none]"])
    try:
        assert make_accelerator(cfg, "unused").mixed_precision == expected
    finally:
        reset_accelerate()
