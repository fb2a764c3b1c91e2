"""mimkit evaluate, compare and segment on tiny checkpoints and the embedded images."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from mimkit.config import load_config

from .runs import cli_module

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-train", "64", "--max-eval", "32", "--batch-size", "32", "--num-workers", "0", "--linear-epochs", "2",
        "--fewshot-shots", "2", "--fewshot-iterations", "5", "--fewshot-seeds", "0", "1"]


def make_run(root: Path, preset: str, seed: int) -> Path:
    """A training output dir as the trainer leaves it: encoder/ (model.safetensors + config.json) and config.yaml."""
    from mimkit.hub import save_pretrained

    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0)
    run = root / preset.split("+")[0]
    save_pretrained(vit, run / "encoder")
    (run / "config.yaml").write_text(load_config(preset).to_yaml())
    return run


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run(root, "mae+tiny", 0), make_run(root, "latent_mim+tiny", 1)


def test_evaluate_writes_every_metric(runs, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert cli_module("evaluate").main(["--checkpoint", str(runs[0]), "--out", str(out), *FAST]) == 0
    metrics = json.loads(out.read_text())
    for key in ("nn", "knn", "linear", "fewshot", "sim", "sim_patches", "rank"):
        assert isinstance(metrics[key], float), key
    meta = metrics["meta"]
    assert meta["data"]["source"] == "embedded"  # from the run's config.yaml
    assert meta["sizes"] == {"eval": 32, "train": 64}
    assert meta["run"]["variant"] == "pixel" and meta["run"]["objectives"] == ["pixel"]
    assert meta["normalization"]["from"] == "config.yaml"
    shown = capsys.readouterr().out  # with --out: the headline numbers, one a line, not the JSON
    assert f"NN top-1 %        {metrics['nn']:.1f}" in shown and "{" not in shown
    assert len(shown.splitlines()) <= 9
    assert cli_module("evaluate").main(["--checkpoint", str(runs[0]), *FAST]) == 0  # without --out: the JSON
    assert json.loads(capsys.readouterr().out)["nn"] == metrics["nn"]


def test_short_table_flags_a_linear_lr_at_the_edge_of_its_grid():
    from mimkit.eval.cli import short_table

    result = {"nn": 25.02, "fewshot": 30.0, "fewshot_std": 1.25, "sim": 0.78567,
              "meta": {"linear": {"base_lrs": [0.1, 1.0, 10.0], "picked_base_lr": 10.0}}}
    assert short_table(result).splitlines() == [
        "  NN top-1 %        25.0",
        "  few-shot top-1 %  30.0 ± 1.2",
        "  Sim (images)      0.786",
        "  note: the linear probe's lr was picked at the edge of its grid (base lr 10 of 0.1, 1, 10); --linear-lr can widen it",
    ]
    result["meta"]["linear"]["picked_base_lr"] = 1.0
    assert "note" not in short_table(result)


def test_evaluate_errors_name_the_argument(runs, tmp_path, capsys):
    evaluate = cli_module("evaluate")
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(tmp_path / "missing")])
    assert "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(runs[0]), "--pool", "max"])
    assert "--pool" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(runs[0] / "encoder" / "model.safetensors"), "--knn-k", "0"])
    assert "--knn-k" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(runs[0]), "--data", str(tmp_path / "nodata"), "--protocols", "nn"]) == 2
    assert "nodata" in capsys.readouterr().err


def test_evaluate_help_runs_as_a_script():
    # run as a file, scripts/ is on sys.path: its name must not shadow the `evaluate` library
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "scripts/evaluate.py", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--checkpoint" in proc.stdout and "leave-one-out" in proc.stdout


def test_compare_writes_table_csv_and_chart(runs, tmp_path):
    out = tmp_path / "cmp"
    assert cli_module("compare").main([str(runs[1]), str(runs[0]), "--out", str(out), *FAST]) == 0
    table = (out / "compare.md").read_text()
    assert "mae+tiny [pixel]" in table and "latent_mim+tiny [latent]" in table
    assert table.index("[pixel]") < table.index("[latent]")  # pixel variant first, latent beside it
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["variant"] for r in rows] == ["pixel", "latent"]
    assert all(0 <= float(r["nn"]) <= 100 for r in rows)
    with Image.open(out / "compare.png") as png:
        assert png.size[0] > 400 and png.size[1] > 300
    saved = sorted((out / "metrics").glob("*.json"))
    assert len(saved) == 2
    again = tmp_path / "again"  # from the metrics JSONs alone, no evaluation
    assert cli_module("compare").main([*map(str, saved), "--out", str(again)]) == 0
    assert (again / "compare.csv").read_text() == (out / "compare.csv").read_text()


def test_segment_writes_a_grid(runs, tmp_path):
    out = tmp_path / "seg.png"
    args = ["--checkpoint", str(runs[1]), "--num-images", "3", "--clusters", "3", "--cell", "48", "--map", "--out", str(out)]
    assert cli_module("segment").main(args) == 0
    with Image.open(out) as png:
        w, h = png.size
    assert w >= 3 * 48 and h >= 3 * 48  # three columns, three rows
    with pytest.raises(SystemExit):
        cli_module("segment").main(["--checkpoint", str(runs[1]), "--clusters", "0"])


@pytest.mark.parametrize("baseline", ["init", "pixels"])
def test_evaluate_baselines_of_a_run(tmp_path, baseline):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(load_config("latent_mim+tiny").to_yaml())  # no encoder: nothing trained yet
    out = tmp_path / "metrics.json"
    args = ["--checkpoint", str(run), "--baseline", baseline, "--out", str(out), "--protocols", "nn", "knn", *FAST]
    assert cli_module("evaluate").main(args) == 0
    metrics = json.loads(out.read_text())
    assert metrics["meta"]["checkpoint"] == f"{run}#{baseline}"
    assert 0.0 <= metrics["nn"] <= 100.0 and 0.0 <= metrics["knn"] <= 100.0
    if baseline == "init":  # rebuilt from the config and seed: the same encoder, the same numbers
        again = tmp_path / "again.json"
        assert cli_module("evaluate").main([*args[:5], str(again), *args[6:]]) == 0
        assert json.loads(again.read_text())["nn"] == metrics["nn"]


def test_evaluate_baseline_needs_a_run_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_module("evaluate").main(["--checkpoint", str(tmp_path / "empty"), "--baseline", "init"]) == 2
    assert "holds no run config.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["context", "target"])
def test_a_training_checkpoint_file_is_built_from_its_run_config(tmp_path, which):
    # checkpoints/step_N/model.safetensors has no config.json beside it: the architecture (a
    # 4-px patch on a 32-px image here, not the timm name's 16 px on 224) comes from RUN/config.yaml
    import safetensors.torch

    from mimkit.eval.runs import load_run
    from mimkit.model import build_model

    cfg = load_config("latent_mim+tiny", ["model.patch_size=4", "model.img_size=32"])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # make the two encoders differ, as training does
        for p in model.target.own.vit.parameters():
            p.add_(0.5)
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000003").mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    ckpt = run / "checkpoints" / "step_00000003" / "model.safetensors"
    safetensors.torch.save_model(model, str(ckpt))
    loaded = load_run(f"{ckpt}#{which}")
    expected = (model.encoder if which == "context" else model.target.own).vit.state_dict()
    got = loaded.vit.state_dict()
    assert loaded.vit.patch_embed.patch_size == (4, 4) and set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
