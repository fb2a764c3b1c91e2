"""Pictures: patches placed back exactly, reconstructions whose visible cells are the input's
pixels, retrieval maps, and `mimkit show` on tiny trained runs (sizes, not constant, clear refusals)."""

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.config import load_config
from mimkit.encoder import Geometry
from mimkit.masking import draw_masks, patchify
from mimkit.model import build_model
from mimkit.viz.grid import cell_map, place_patches
from mimkit.viz.latent import retrieval_maps
from mimkit.viz.recon import reconstruct

from .runs import TINY, cli_module, run_train


@pytest.mark.parametrize("gap", [0, 2])
def test_place_patches_puts_every_patch_back_where_patchify_cut_it(gap):
    g = Geometry(grid=4, patch=3, gap=gap)
    torch.manual_seed(0)
    images = torch.randn(2, 3, g.input_size, g.input_size)
    offsets, visible, target = draw_masks(2, g.num_cells, gap, 0.75, torch.device("cpu"))
    patches = patchify(images, g.patch, gap, offsets)
    every = torch.arange(g.num_cells).expand(2, -1)
    placed = place_patches(torch.zeros_like(images), patches, every, g, offsets)
    assert torch.equal(patchify(placed, g.patch, gap, offsets), patches)
    only_visible = place_patches(torch.zeros_like(images), patches.gather(1, visible[..., None].expand(-1, -1, patches.shape[-1])), visible, g, offsets)
    assert torch.equal(patchify(only_visible, g.patch, gap, offsets).gather(1, target[..., None].expand(-1, -1, patches.shape[-1])),
                       torch.zeros(2, target.shape[1], patches.shape[-1]))  # nothing written into target cells


def test_cell_map_puts_values_at_their_cells():
    m = cell_map(torch.tensor([[1.0, 0.0]]), torch.tensor([[3, 0]]), 2)
    assert m[0, 0, 0] == 0.0 and m[0, 1, 1] == 1.0 and torch.isnan(m[0, 0, 1]) and torch.isnan(m[0, 1, 0])


@pytest.mark.parametrize("overrides", [[], ["masking.gap=1"]])
def test_reconstruction_visible_cells_are_the_input_pixels(overrides):
    model = build_model(load_config("mae+tiny", overrides)).eval()
    g = model.geometry
    torch.manual_seed(1)
    images = torch.randn(3, 3, g.input_size, g.input_size)
    cols = reconstruct(model, images, seed=5)
    from mimkit.viz.masked import masked_step

    step = masked_step(model, images, seed=5)  # the same split for the same seed
    for name in ("masked input", "prediction + visible"):
        got = patchify(cols[name], g.patch, g.gap, step.offsets)
        idx = step.visible_idx[..., None].expand(-1, -1, got.shape[-1])
        assert torch.equal(got.gather(1, idx), step.patches.gather(1, idx)), name
    assert not torch.equal(cols["prediction"], cols["prediction + visible"])


def test_retrieval_maps_mark_targets_only():
    model = build_model(load_config("latent_mim+tiny")).eval()
    images = torch.randn(2, 3, model.input_size, model.input_size)
    maps = retrieval_maps(model, images, seed=0)
    n_targets = model.geometry.num_cells - int(model.geometry.num_cells * (1 - model.ratio) + 0.5)
    assert maps.hits.shape == (2, 8, 8) and int(maps.hits[0].isfinite().sum()) in (n_targets, n_targets + 1)
    assert 0.0 <= maps.top1 <= 1.0 and set(maps.hits[maps.hits.isfinite()].tolist()) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz")
    runs = {}
    for preset in ("mae+tiny", "latent_mim+tiny"):
        out = root / preset.split("+")[0]
        args = [*TINY, "train.max_steps=4", "train.log_every=1", "train.eval_baseline=false", "train.eval_knn_train=0"]
        args[args.index("--preset") + 1] = preset
        assert run_train(*args, "--output", str(out)) == 0
        runs[preset.split("+")[0]] = out
    return runs


def _png(path):
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert arr.std() > 1.0, f"{path} is constant"
    return arr.shape


def test_show_draws_what_each_run_allows(tiny_runs, tmp_path, capsys):
    out = tmp_path / "pics"
    show = cli_module("show")
    assert show.main([str(tiny_runs["mae"]), "--out", str(out), "--num-images", "3", "--fit-images", "16"]) == 0
    assert "skipped" in capsys.readouterr().err  # mae has no latent head: said, not an error under `all`
    h, w, _ = _png(out / "mae_recon.png")
    assert (h, w) == (640, 800)  # 4 columns x 2 in, 3 rows x 2 in + a title, at 100 dpi
    _png(out / "mae_pca.png")
    _png(out / "mae_curves.png")
    assert show.main([str(tiny_runs["latent_mim"]), "--what", "latent,pca", "--out", str(out), "--num-images", "2",
                      "--fit-images", "8", "--encoder", "target"]) == 0
    _png(out / "latent_mim_latent.png")
    _png(out / "latent_mim_pca.png")


def test_show_refuses_a_picture_the_run_cannot_give_in_one_line(tiny_runs, tmp_path, capsys):
    assert cli_module("show").main([str(tiny_runs["latent_mim"]), "--what", "recon", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no pixel head" in err
    assert cli_module("show").main([str(tiny_runs["latent_mim"]), "--what", "recno"]) == 2
    assert "recno" in capsys.readouterr().err


def test_curves_overlay_several_runs_and_log_retrieval(tiny_runs, tmp_path):
    from mimkit.viz.curves import read_log

    assert cli_module("show").main([str(tiny_runs["mae"]), str(tiny_runs["latent_mim"]), "--what", "curves", "--out", str(tmp_path)]) == 0
    _png(tmp_path / "curves.png")
    records = [r for r in read_log(tiny_runs["latent_mim"] / "log.jsonl") if "loss" in r]
    assert len(records) == 4 and all(0.0 <= r["latent/retrieval_top1"] <= 1.0 for r in records)


def test_pca_map_colours_the_two_halves_of_an_image_apart():
    import timm

    from mimkit.viz.pca import pca_rgb

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0).eval()
    images = torch.zeros(8, 3, 32, 32)
    images[:, 0, :, :16] = 2.0  # a red left half
    images[:, 2, :, 16:] = 2.0  # a blue right half
    images += 0.05 * torch.randn_like(images)
    rgb = pca_rgb(vit, images, images[:2])  # (2, 4, 4, 3)
    left, right = rgb[:, :, :2].mean(dim=(0, 1, 2)), rgb[:, :, 2:].mean(dim=(0, 1, 2))
    assert rgb.shape == (2, 4, 4, 3)
    assert (left - right).abs().max() > 0.5  # the first component separates the halves
