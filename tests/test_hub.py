"""mimkit.hub: loading encoders from every source layout, exporting, pushing (all offline, CPU)."""

from __future__ import annotations

import json
import re
import shutil
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from mimkit.hub import CheckpointError, load_encoder, push_to_hub, save_pretrained, source_architecture

from .hub_fixtures import (
    ARCH,
    C,
    D,
    TINY,
    P,
    PILAMIM_EPS,
    Opaque,
    latent_mim_checkpoint,
    latent_mim_features,
    mae_checkpoint,
    pilamim_checkpoint,
    pilamim_features,
    populate_hf_cache,
    timm_state,
    tiny_vit,
)

REPO = "timm/vit_tiny_patch16_224.mimkit_test"


def images(seed: int = 0, side: int = 32) -> Tensor:
    return torch.randn((2, C, side, side), generator=torch.Generator().manual_seed(seed))


def assert_state_equal(vit: nn.Module, expected: dict[str, Tensor]) -> None:
    got = vit.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def load_tiny(source: str | Path, **kw) -> nn.Module:
    return load_encoder(source, ARCH, **{**TINY, **kw}).eval()


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache in a temp dir, offline; set after huggingface_hub was imported."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# --------------------------------------------------------------------------- timm / MAE


def test_mae_checkpoint_maps_every_encoder_tensor_and_drops_the_decoder(tmp_path: Path) -> None:
    state = timm_state(1)
    path = tmp_path / "mae_pretrain.pth"
    torch.save(mae_checkpoint(state), path)
    vit = load_tiny(path, drop_path_rate=0.1)  # the kwargs mimkit forwards
    assert_state_equal(vit, state)
    with pytest.raises(CheckpointError, match="no target encoder"):
        load_tiny(f"{path}#target")


@pytest.mark.parametrize(
    ("suffix", "wrap"),
    [(".safetensors", None), (".bin", None), (".pth", None), (".pth", "model"), (".pth", "state_dict"), (".bin", "module")],
)
def test_plain_timm_files(tmp_path: Path, suffix: str, wrap: str | None) -> None:
    state = timm_state(2)
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state if wrap is None else {wrap: state, "epoch": 1}, path)
    assert_state_equal(load_tiny(path), state)


def test_classifier_head_dropped_and_module_prefix_stripped(tmp_path: Path) -> None:
    state = timm_state(3)
    full = {f"module.{k}": v for k, v in {**state, "head.weight": torch.zeros(10, D), "head.bias": torch.zeros(10)}.items()}
    torch.save({"model": full}, tmp_path / "ft.pth")
    assert_state_equal(load_tiny(tmp_path / "ft.pth"), state)


# --------------------------------------------------------------------------- Latent MIM


@pytest.mark.parametrize("module_prefix", [False, True])
@pytest.mark.parametrize("which", ["context", "target"])
def test_latent_mim_mapping(tmp_path: Path, module_prefix: bool, which: str) -> None:
    ckpt = latent_mim_checkpoint(module_prefix)
    path = tmp_path / "lmim.pth"
    torch.save(ckpt, path)
    pre = "module." * module_prefix + ("target_encoder." if which == "target" else "encoder.")
    src = {k[len(pre) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(pre)}
    vit = load_tiny(path, which=which) if module_prefix else load_tiny(f"{path}#{which}")
    got = vit.state_dict()

    lin = src["embed.proj.weight"]  # (D, P*P*C), pixel (i, j, c) at (i*P + j)*C + c
    conv = got["patch_embed.proj.weight"]  # (D, C, P, P)
    for c in range(C):
        for i in range(P):
            for j in range(P):
                assert torch.equal(conv[:, c, i, j], lin[:, (i * P + j) * C + c])
    assert torch.equal(got["patch_embed.proj.bias"], src["embed.proj.bias"])
    assert torch.equal(got["pos_embed"], src["pos_embed.pos_embeds"].unsqueeze(0))
    assert torch.equal(got["cls_token"], src["cls_token"])
    assert torch.equal(got["norm.weight"], src["norm.weight"])
    assert torch.equal(got["norm.bias"], src["norm.bias"])
    blocks = {k: v for k, v in got.items() if k.startswith("blocks.")}
    assert set(blocks) == {k for k in src if k.startswith("blocks.")}
    for k, v in blocks.items():
        assert torch.equal(v, src[k]), k


def test_latent_mim_features_match_the_original_layout(tmp_path: Path) -> None:
    ckpt = latent_mim_checkpoint()
    torch.save(ckpt, tmp_path / "lmim.pth")
    x = images(1)
    with torch.no_grad():
        for which, prefix in (("context", "encoder."), ("target", "target_encoder.")):
            vit = load_tiny(tmp_path / "lmim.pth", which=which)
            ref = latent_mim_features(ckpt["state_dict"], x, prefix)  # (B, 1+L, D)
            torch.testing.assert_close(vit.forward_features(x), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- PiLaMIM


def test_pilamim_mapping_and_zero_cls_position(tmp_path: Path) -> None:
    sd = pilamim_checkpoint()
    path = tmp_path / "pilamim.pt"
    torch.save(sd, path)
    for which, pre in (("context", "encoder."), ("target", "target_encoder.")):
        got = load_tiny(f"{path}#{which}").state_dict()
        assert torch.equal(got["patch_embed.proj.weight"], sd[f"{pre}patchify.weight"])
        assert torch.equal(got["patch_embed.proj.bias"], sd[f"{pre}patchify.bias"])
        assert torch.equal(got["cls_token"], sd[f"{pre}cls_token"])
        assert torch.equal(got["pos_embed"][0, 0], torch.zeros(D))
        assert torch.equal(got["pos_embed"][0, 1:], sd[f"{pre}pos_embedding"][:, 0])
        assert torch.equal(got["norm.weight"], sd[f"{pre}layer_norm.weight"])
        for i in range(TINY["depth"]):
            assert torch.equal(got[f"blocks.{i}.attn.qkv.bias"], torch.zeros(3 * D))  # PiLaMIM has none
            for name in ("norm1.weight", "attn.qkv.weight", "attn.proj.bias", "mlp.fc1.weight", "mlp.fc2.bias"):
                assert torch.equal(got[f"blocks.{i}.{name}"], sd[f"{pre}transformer.{i}.{name}"])


def test_pilamim_features_match_the_original(tmp_path: Path) -> None:
    sd = pilamim_checkpoint()
    torch.save(sd, tmp_path / "pilamim.pt")
    x = images(2)
    vit = load_tiny(tmp_path / "pilamim.pt", norm_layer=partial(nn.LayerNorm, eps=PILAMIM_EPS))
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), pilamim_features(sd, x), rtol=1e-5, atol=1e-5)


def test_pilamim_linear_probe_layout(tmp_path: Path) -> None:
    sd = {k[len("encoder.") :]: v for k, v in pilamim_checkpoint().items() if k.startswith("encoder.")}
    sd.update({"batch_norm.running_mean": torch.zeros(D), "head.0.running_mean": torch.zeros(D), "head.1.weight": torch.zeros(10, D)})
    torch.save(sd, tmp_path / "probe.pt")
    got = load_tiny(tmp_path / "probe.pt").state_dict()
    assert torch.equal(got["patch_embed.proj.weight"], sd["patchify.weight"])
    assert torch.equal(got["blocks.1.mlp.fc2.weight"], sd["transformer.1.mlp.fc2.weight"])


# --------------------------------------------------------------------------- mimkit checkpoints


def test_mimkit_model_state_dict(tmp_path: Path) -> None:
    ctx, tgt = timm_state(4), timm_state(5)
    sd = {**{f"encoder.vit.{k}": v for k, v in ctx.items()}, **{f"target.own.vit.{k}": v for k, v in tgt.items()}}
    sd["heads.latent.decoder.weight"] = torch.zeros(3, 3)
    safetensors.torch.save_file(sd, str(tmp_path / "model.safetensors"))
    assert_state_equal(load_tiny(tmp_path / "model.safetensors"), ctx)
    assert_state_equal(load_tiny(tmp_path / "model.safetensors", which="target"), tgt)


# --------------------------------------------------------------------------- export round trip


def test_save_pretrained_round_trip_plain_timm_and_load_encoder(tmp_path: Path) -> None:
    vit = tiny_vit(6)
    out = save_pretrained(vit, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == ARCH and config["num_classes"] == 0 and config["num_features"] == D
    shape_args = ("patch_size", "embed_dim", "depth", "num_heads")
    assert {k: config["model_args"][k] for k in shape_args} == {k: TINY[k] for k in shape_args}
    assert config["model_args"]["img_size"] == [32, 32]
    assert config["pretrained_cfg"]["input_size"] == [C, 32, 32] and config["pretrained_cfg"]["custom_load"] is False

    x = images(3)
    with torch.no_grad():
        expected = vit.forward_features(x)
        plain = timm.create_model(
            ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")), num_classes=0, **TINY
        ).eval()
        assert torch.equal(plain.forward_features(x), expected)
        local_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert torch.equal(local_dir.forward_features(x), expected)
    assert_state_equal(load_encoder(out), vit.state_dict())
    assert_state_equal(load_encoder(out / "model.safetensors"), vit.state_dict())
    assert source_architecture(out) == (ARCH, config["model_args"])


def test_training_output_dir_with_encoder_subdir(tmp_path: Path) -> None:
    vit = tiny_vit(7)
    save_pretrained(vit, tmp_path / "run" / "encoder")
    (tmp_path / "run" / "train_log.txt").write_text("step 1\n")
    assert_state_equal(load_encoder(tmp_path / "run"), vit.state_dict())


def test_export_name_and_data_config(tmp_path: Path) -> None:
    vit = tiny_vit(8)
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 1.0}
    out = save_pretrained(vit, tmp_path / "small", name="vit_small_patch16_224.augreg_in21k", data_config=imagenet)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_small_patch16_224"  # the tag describes other weights
    assert "tag" not in config["pretrained_cfg"] and "license" not in config["pretrained_cfg"]
    assert_state_equal(load_encoder(out), vit.state_dict())  # model_args rebuild the tiny shapes
    # timm's own preprocessing resolution reads the exported normalisation and crop back
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    resolved = timm.data.resolve_data_config({}, model=loaded)
    assert [list(resolved["mean"]), list(resolved["std"]), resolved["crop_pct"]] == [imagenet["mean"], imagenet["std"], 1.0]
    assert resolved["input_size"] == (3, *vit.patch_embed.img_size)
    with pytest.raises(ValueError, match="not a timm model"):
        save_pretrained(vit, tmp_path / "x", name="no_such_vit")
    hub_named = save_pretrained(vit, tmp_path / "hub", name=f"hf-hub:{REPO}")
    assert json.loads((hub_named / "config.json").read_text())["architecture"] == ARCH  # the architecture the model records


# --------------------------------------------------------------------------- Hugging Face cache


def test_hub_id_from_offline_cache(tmp_path: Path, offline_cache: Path) -> None:
    vit = tiny_vit(9)
    populate_hf_cache(offline_cache, REPO, save_pretrained(vit, tmp_path / "export"))
    assert_state_equal(load_encoder(f"hf-hub:{REPO}"), vit.state_dict())  # architecture from config.json
    assert_state_equal(load_encoder(f"hf-hub:{REPO}", ARCH, **TINY), vit.state_dict())
    assert source_architecture(f"hf-hub:{REPO}")[0] == ARCH


def test_hub_id_pinned_revision_and_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vit = tiny_vit(10)
    commit = "f" * 40
    populate_hf_cache(tmp_path / "hf_home" / "hub", REPO, save_pretrained(vit, tmp_path / "export"), commit=commit)
    assert_state_equal(load_encoder(f"hf-hub:{REPO}@{commit}"), vit.state_dict())


def test_hub_timm_layout_weights_with_explicit_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timm Hub repo whose config.json has no model_args (like timm/vit_base_patch16_224.mae)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "default_cache"))
    state = timm_state(11)
    files = tmp_path / "files"
    files.mkdir()
    safetensors.torch.save_file(state, str(files / "model.safetensors"))
    (files / "config.json").write_text(json.dumps({"architecture": ARCH, "num_classes": 0, "pretrained_cfg": {"tag": "mae"}}))
    populate_hf_cache(tmp_path / "elsewhere", REPO, files)
    with pytest.raises(FileNotFoundError, match="offline"):
        load_encoder(f"hf-hub:{REPO}", ARCH, **TINY)  # not in the default cache
    assert_state_equal(load_encoder(f"hf-hub:{REPO}", ARCH, cache_dir=tmp_path / "elsewhere", **TINY), state)


def test_export_is_a_valid_timm_hub_repo(tmp_path: Path, offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's own Hub loader reads the exported folder from the cache (offline, no network call)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    vit = tiny_vit(12)
    populate_hf_cache(offline_cache, REPO, save_pretrained(vit, tmp_path / "export"))
    model = timm.create_model(f"hf-hub:{REPO}", pretrained=True, cache_dir=offline_cache).eval()
    x = images(4)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), vit.forward_features(x))


def test_missing_hub_repo(offline_cache: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"hf-hub:timm/absent.*offline.*hf_cache"):
        load_encoder("hf-hub:timm/absent", ARCH)


# --------------------------------------------------------------------------- position-embedding grid


def test_pos_embed_resampled_to_a_larger_grid(tmp_path: Path) -> None:
    state = timm_state(13)
    torch.save(mae_checkpoint(state), tmp_path / "mae.pth")
    vit = load_tiny(tmp_path / "mae.pth", img_size=48)
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=[12, 12], num_prefix_tokens=1)
    assert vit.pos_embed.shape == (1, 1 + 144, D)
    assert torch.equal(vit.pos_embed.data, expected)
    assert torch.equal(vit.blocks[1].mlp.fc1.weight, state["blocks.1.mlp.fc1.weight"])


def test_pos_embed_resampled_for_reference_layouts(tmp_path: Path) -> None:
    lmim, pil = latent_mim_checkpoint(), pilamim_checkpoint()
    torch.save(lmim, tmp_path / "lmim.pth")
    torch.save(pil, tmp_path / "pil.pt")
    lm_pos = lmim["state_dict"]["encoder.pos_embed.pos_embeds"].unsqueeze(0)  # (1, 1+L, D)
    got = load_tiny(tmp_path / "lmim.pth", img_size=24).pos_embed.data
    assert torch.equal(got, resample_abs_pos_embed(lm_pos, new_size=[6, 6], num_prefix_tokens=1))
    pil_pos = pil["encoder.pos_embedding"].transpose(0, 1)  # (1, L, D)
    got = load_tiny(tmp_path / "pil.pt", img_size=48).pos_embed.data
    assert torch.equal(got[:, :1], torch.zeros(1, 1, D))
    assert torch.equal(got[:, 1:], resample_abs_pos_embed(pil_pos, new_size=[12, 12], num_prefix_tokens=0))


# --------------------------------------------------------------------------- errors


def test_missing_path_and_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.pth"))):
        load_tiny(tmp_path / "nope.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_tiny(tmp_path / "empty")


@pytest.mark.parametrize(
    ("filename", "content", "match"),
    [
        ("notes.pth", b"just some text\n", "not a PyTorch or safetensors checkpoint"),
        ("weights.safetensors", b"\x00\x01garbage", "not a safetensors checkpoint"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, filename: str, content: bytes, match: str) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        load_tiny(path)
    assert str(path) in str(err.value)


def test_checkpoint_without_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth: holds a list"):
        load_tiny(tmp_path / "list.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match=r"meta\.pth: holds no tensors \(keys: epoch, lr\)"):
        load_tiny(tmp_path / "meta.pth")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: unrecognised checkpoint layout.*foo\.weight"):
        load_tiny(tmp_path / "other.pth")


def test_unsafe_pickle_refused_unless_trusted(tmp_path: Path) -> None:
    state = timm_state(14)
    torch.save({"model": state, "extra": Opaque()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match=r"pickled\.pth: holds Python objects.*hub_fixtures\.Opaque.*weights_only=False"):
        load_tiny(tmp_path / "pickled.pth")
    assert_state_equal(load_tiny(tmp_path / "pickled.pth", weights_only=False), state)


def test_mismatch_lists_every_kind_of_difference_in_one_message(tmp_path: Path) -> None:
    state = timm_state(15)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "tiny.safetensors"
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_tiny(path, depth=3, embed_dim=96, num_heads=3)
    msg = str(err.value)
    assert msg.startswith(str(path))
    assert "missing from the checkpoint" in msg and "blocks.2.norm1.weight" in msg
    assert "not in the model (1): extra.weight" in msg
    assert "shape mismatch" in msg and "patch_embed.proj.weight checkpoint (64, 3, 4, 4) vs model (96, 3, 4, 4)" in msg


def test_name_required_without_config(tmp_path: Path) -> None:
    torch.save(timm_state(16), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match=r"bare\.pth: has no config\.json.*timm model name"):
        load_encoder(tmp_path / "bare.pth")


def test_which_conflicts_with_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="disagrees"):
        load_encoder(f"{tmp_path / 'x.pth'}#target", ARCH, which="context")


# --------------------------------------------------------------------------- push_to_hub


def test_push_to_hub_uploads_the_save_pretrained_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls: dict = {}

    def create_repo(self, repo_id: str, **kw):
        calls["create_repo"] = dict(repo_id=repo_id, **kw)
        return SimpleNamespace(repo_id="someone/" + repo_id.split("/")[-1])

    def file_exists(self, repo_id: str, filename: str, **kw) -> bool:
        return False

    def upload_folder(self, *, repo_id: str, folder_path, commit_message=None, revision=None, **kw):
        calls["upload"] = dict(repo_id=repo_id, commit_message=commit_message, token=self.token)
        shutil.copytree(folder_path, tmp_path / "uploaded")
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "file_exists", file_exists)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)

    vit = tiny_vit(17)
    result = push_to_hub(vit, "my-encoder", token="hf_test", private=True, commit_message="mimkit run 1")
    assert result == "commit-info"
    assert calls["create_repo"]["private"] is True and calls["create_repo"]["exist_ok"] is True
    assert calls["upload"] == dict(repo_id="someone/my-encoder", commit_message="mimkit run 1", token="hf_test")

    local = save_pretrained(vit, tmp_path / "local")
    up = tmp_path / "uploaded"
    assert sorted(p.name for p in up.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (up / "config.json").read_bytes() == (local / "config.json").read_bytes()
    assert (up / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()
    assert "hf-hub:someone/my-encoder" in (up / "README.md").read_text()
    assert_state_equal(load_encoder(up), vit.state_dict())


def test_push_to_hub_keeps_an_existing_model_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uploaded: list[str] = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "file_exists", lambda self, **kw: True)
    def upload_folder(self, *, folder_path, **kw) -> None:
        uploaded.extend(sorted(p.name for p in Path(folder_path).iterdir()))

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    push_to_hub(tiny_vit(18), "me/enc")
    assert uploaded == ["config.json", "model.safetensors"]


# --------------------------------------------------------------------------- mimkit wiring


def test_init_encoder_and_init_target_through_the_config(tmp_path: Path) -> None:
    import mimkit

    ctx, tgt = tiny_vit(19), tiny_vit(23)
    ctx_dir, tgt_dir = save_pretrained(ctx, tmp_path / "ctx"), save_pretrained(tgt, tmp_path / "tgt")
    learned = "model.pos_embed=learned"  # keep the loaded position tables
    model = mimkit.build_model(mimkit.load_config("latent_mim+tiny", [learned, f"init.encoder={ctx_dir}", f"init.target={tgt_dir}"]))
    assert_state_equal(model.encoder.vit, ctx.state_dict())
    assert_state_equal(model.target.own.vit, tgt.state_dict())
    same = mimkit.build_model(mimkit.load_config("latent_mim+tiny", [learned, f"init.encoder={ctx_dir}", "init.target=same"]))
    assert_state_equal(same.target.own.vit, ctx.state_dict())
    with pytest.raises(mimkit.ConfigError, match="init.target: target.mode='stopgrad'"):
        mimkit.build_model(mimkit.load_config("latent_mim+tiny", ["target.mode=stopgrad", f"init.target={tgt_dir}"]))
    with pytest.raises(mimkit.ConfigError, match="init.encoder: checkpoint not found"):
        mimkit.build_model(mimkit.load_config("latent_mim+tiny", [f"init.encoder={tmp_path / 'nope'}"]))


def test_sincos_positions_replace_loaded_ones_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import mimkit
    from mimkit.encoder import fix_sincos_positions

    ctx, tgt = tiny_vit(19), tiny_vit(23)
    ctx_dir, tgt_dir = save_pretrained(ctx, tmp_path / "ctx"), save_pretrained(tgt, tmp_path / "tgt")
    with caplog.at_level("WARNING", logger="mimkit.model"):
        model = mimkit.build_model(mimkit.load_config("latent_mim+tiny", [f"init.encoder={ctx_dir}", f"init.target={tgt_dir}"]))
    assert "model.pos_embed=sincos replaces the position table loaded from init.encoder" in caplog.text
    coords = model.cfg.model.sincos_coords  # the preset's cell coordinates
    fix_sincos_positions(ctx, grid=8, coords=coords)
    fix_sincos_positions(tgt, grid=8, coords=coords)
    assert_state_equal(model.encoder.vit, ctx.state_dict())  # everything else loaded as it was
    assert_state_equal(model.target.own.vit, tgt.state_dict())
    caplog.clear()
    with caplog.at_level("WARNING", logger="mimkit.model"):
        mimkit.build_model(mimkit.load_config("latent_mim+tiny"))  # random init: nothing to warn about
    assert "pos_embed" not in caplog.text


def test_train_py_starts_from_a_hub_id_in_an_offline_cache(tmp_path: Path, offline_cache: Path) -> None:
    from .runs import TINY, losses, run_train

    export = save_pretrained(tiny_vit(31), tmp_path / "export")
    populate_hf_cache(offline_cache, REPO, export)
    args = [*TINY, "train.max_steps=2", "train.log_every=1"]
    assert run_train(*args, "--output", str(tmp_path / "hub"), f"init.encoder=hf-hub:{REPO}") == 0
    assert run_train(*args, "--output", str(tmp_path / "dir"), f"init.encoder={export}") == 0
    assert run_train(*args, "--output", str(tmp_path / "scratch")) == 0
    hub, local, scratch = (losses(tmp_path / n) for n in ("hub", "dir", "scratch"))
    assert hub == local  # the Hub id resolved through the cache to the same weights
    assert hub != scratch


def test_the_public_api_is_importable_from_mimkit() -> None:
    import mimkit
    from mimkit import hub

    assert {"load_encoder", "save_pretrained", "push_to_hub"} <= set(mimkit.__all__)
    assert (mimkit.load_encoder, mimkit.save_pretrained, mimkit.push_to_hub) == (hub.load_encoder, hub.save_pretrained, hub.push_to_hub)
    for name in mimkit.__all__:
        assert getattr(mimkit, name) is not None, name
