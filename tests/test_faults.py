"""Fault injection: kills, corrupt checkpoints, non-finite losses, collapse, bad data, bad config."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

from mimkit.data import decode_rgb

from .runs import ENV, ROOT, TINY, launch_cmd, losses, run_train

# --------------------------------------------------------------------------- exact resume after SIGKILL


def _kill_after(out: Path, step: int, *args: str, processes: int = 1) -> None:
    """Start a run, SIGKILL its whole process group once the log reaches ``step``."""
    proc = subprocess.Popen(launch_cmd(*args, "--output", str(out), processes=processes), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if (out / "log.jsonl").is_file() and max(losses(out), default=0) >= step:
                break
            if proc.poll() is not None:
                raise AssertionError(f"run ended before it could be killed: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        else:
            raise AssertionError("run never reached the kill step")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode != 0  # it was killed, not finished


@pytest.mark.slow
@pytest.mark.parametrize("variant, processes", [(["train.grad_accum=1"], 1), (["train.grad_accum=2"], 1), ([], 2)],
                         ids=["plain", "grad_accum", "two_processes"])
def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path, variant, processes):
    args = [*TINY, *variant, "train.max_steps=24", "train.save_every=3", "train.log_every=1", "train.keep_last=10"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done = subprocess.run(launch_cmd(*args, "--output", str(reference), processes=processes), cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _kill_after(killed, 7, *args, processes=processes)
    resumed = subprocess.run(launch_cmd(*args, "--output", str(killed), "--resume", processes=processes), cwd=ROOT,
                             env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = losses(reference), losses(killed)
    assert sorted(got) == list(range(1, 25))  # the killed run's log was cut back to its checkpoint, then continued
    for step in range(1, 25):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step


# --------------------------------------------------------------------------- checkpoints


def _train(out: Path, *extra: str) -> int:
    return run_train(*TINY, "--output", str(out), "train.save_every=2", "train.keep_last=2", *extra)


def test_keep_last_and_leftover_staging_dirs(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "train.max_steps=6") == 0
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000006"]
    # a kill during a save leaves a staging dir: it is never taken as the latest
    (root / ".tmp_step_00000008").mkdir()
    (root / ".tmp_step_00000008" / "model.safetensors").write_bytes(b"partial")
    from mimkit.checkpoint import latest_checkpoint

    assert latest_checkpoint(out).name == "step_00000006"


def test_corrupt_checkpoint_is_named_and_latest_falls_back(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert _train(out, "train.max_steps=4") == 0
    newest = out / "checkpoints" / "step_00000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    assert _train(out, "train.max_steps=4", "--resume", str(newest.parent)) == 2
    assert str(newest) in capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        assert _train(out, "train.max_steps=6", "--resume", "--extend") == 0  # a longer run: --extend
    assert any("step_00000004" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_resume_from_a_missing_path_is_a_clear_error(tmp_path, capsys):
    assert _train(tmp_path / "run", "train.max_steps=2", "--resume", str(tmp_path / "nowhere")) == 2
    assert "nowhere" in capsys.readouterr().err


# --------------------------------------------------------------------------- non-finite loss, collapse


@pytest.fixture
def nan_at_step_3(monkeypatch):
    from mimkit.objectives.latent import LatentObjective

    original = LatentObjective.forward
    calls = {"n": 0}

    def forward(self, ctx):
        out = original(self, ctx)
        calls["n"] += 1
        if calls["n"] == 3:
            out["latent/loss"] = out["latent/loss"] * float("nan")
        return out

    monkeypatch.setattr(LatentObjective, "forward", forward)


def test_nonfinite_loss_stops_naming_step_and_head(tmp_path, capsys, nan_at_step_3):
    out = tmp_path / "run"
    assert _train(out, "train.max_steps=8", "train.log_every=4") == 3
    err = capsys.readouterr().err
    assert "non-finite loss at step 3 in latent" in err
    assert (out / "diagnostics" / "checkpoints").is_dir()
    assert not (out / "checkpoints" / "step_00000004").exists()  # no poisoned regular checkpoint


def test_nonfinite_loss_can_be_skipped_and_counted(tmp_path, nan_at_step_3):
    out = tmp_path / "run"
    assert _train(out, "train.max_steps=5", "train.on_nonfinite=skip") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nonfinite_steps"] == 1 and summary["steps"] == 5
    from safetensors.torch import load_file

    weights = load_file(out / "encoder" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_collapse_alarm_warns_and_can_stop(tmp_path, caplog, capsys):
    # a threshold every similarity exceeds makes the alarm fire after `patience` logs
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        assert _train(tmp_path / "warn", "train.max_steps=3", "train.collapse_threshold=-1.0", "train.collapse_patience=2") == 0
    assert any("COLLAPSE" in r.getMessage() for r in caplog.records)
    assert _train(tmp_path / "stop", "train.max_steps=6", "train.collapse_threshold=-1.0", "train.collapse_patience=2",
                  "train.collapse_action=stop") == 3
    assert "COLLAPSE" in capsys.readouterr().err
    assert (tmp_path / "stop" / "checkpoints" / "step_00000002").is_dir()


# --------------------------------------------------------------------------- bad data


def _png(mode: str, size=(8, 8), color=None) -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, size, color)
    if mode == "P":
        img.putpalette([0, 0, 0, 255, 0, 0] * 128)
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(mode: str = "RGB", size=(16, 16), color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else (10, 20, 30, 40)).save(buf, format="JPEG")
    return buf.getvalue()


def test_every_image_mode_becomes_rgb():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (200, 100, 50, 255))
    rgba.putpixel((1, 0), (200, 100, 50, 0))  # fully transparent: composited onto black
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    img = decode_rgb({"bytes": buf.getvalue(), "path": None})
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (200, 100, 50) and img.getpixel((1, 0)) == (0, 0, 0)
    assert decode_rgb({"bytes": _png("L", color=77), "path": None}).getpixel((0, 0)) == (77, 77, 77)
    pal = Image.new("P", (1, 1), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert decode_rgb({"bytes": buf.getvalue(), "path": None}).getpixel((0, 0)) == (255, 0, 0)
    assert decode_rgb({"bytes": _jpeg("CMYK"), "path": None}).mode == "RGB"
    assert decode_rgb({"bytes": _jpeg()[:40], "path": None}) is None  # truncated
    assert decode_rgb({"bytes": b"not an image", "path": None}) is None


def _write_dataset(root: Path, images: list[bytes], split: str = "train") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=2)})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "label": [i % 2 for i in range(len(images))]}, features=features
    )
    ds.to_parquet(str(root / f"{split}.parquet"))
    return root


def test_bad_images_are_converted_or_skipped_and_counted(tmp_path):
    good = [_jpeg(size=(40, 40)), _png("L", (40, 40), 90), _jpeg("CMYK", (40, 40)), _png("RGBA", (40, 40), (1, 2, 3, 4)),
            _png("P", (40, 40), 1), _jpeg(size=(3, 5))]  # the last is far smaller than the crop
    bad = [_jpeg(size=(40, 40))[:60], b"\x89PNG garbage"]
    images = good[:3] + [bad[0]] + good[3:] + [bad[1]] + good * 2  # 16 images, bad ones not adjacent
    data = _write_dataset(tmp_path / "data", images)
    out = tmp_path / "run"
    assert run_train(*TINY, "--data", str(data), "--output", str(out), "train.max_steps=1", "train.log_every=1") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_images"] == 2  # one batch of all 16: each bad image passed over once
    assert summary["nn"] is None  # no evaluation split in this dataset


@pytest.mark.parametrize(
    "problem, args, message",
    [
        ("empty", ["data.train_split=train"], "corresponds to no data"),
        ("no_split", ["data.train_split=training"], "data.train_split: 'training' not in the splits"),
        ("no_column", ["data.image_column=picture"], "data.image_column: 'picture' not among the columns"),
        ("too_small", ["train.batch_size=64"],
         "train.batch_size: 64 is larger than the training split (8 images); lower train.batch_size, use more data, "
         "or stack a CPU-sized scale on the preset: +micro"),
    ],
)
def test_data_problems_are_clear_errors_before_training(tmp_path, capsys, problem, args, message):
    images = [] if problem == "empty" else [_jpeg()] * 8
    data = _write_dataset(tmp_path / "data", images)
    out = tmp_path / "run"
    base = [a for a in TINY if not a.startswith("train.batch_size")]
    assert run_train(*base, "train.batch_size=4", "--data", str(data), "--output", str(out), *args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_source_is_a_clear_error(tmp_path, capsys):
    assert run_train(*TINY, "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "run")) == 2
    assert "data.source" in capsys.readouterr().err


def _image_folder(root: Path, good: int, bad: int) -> Path:
    (root / "a").mkdir(parents=True)
    for i in range(good + bad):
        (root / "a" / f"{i:03d}.jpg").write_bytes(_jpeg(size=(40, 40)) if i < good else b"not a jpeg")
    return root


def test_a_folder_of_undecodable_images_is_one_clear_line_before_anything_is_written(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", good=0, bad=40)
    assert run_train(*TINY, "--data", str(data), "--output", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "data.source: none of 16 sampled images" in err and "are the files in the folder images?" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_long_run_of_undecodable_images_while_training_is_one_clear_line(tmp_path, capsys, workers):
    data = _image_folder(tmp_path / "data", good=16, bad=100)  # the sample check passes; a batch then meets 65 bad ones
    base = [a for a in TINY if not a.startswith(("train.batch_size", "data.num_workers"))]
    code = run_train(*base, "train.batch_size=8", f"data.num_workers={workers}", "data.hflip=false", "train.max_steps=20",
                     "--data", str(data), "--output", str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2 and "consecutive undecodable images" in err.splitlines()[-1], err[-2000:]
    assert err.splitlines()[-1].startswith("error: data: ") and "Traceback" not in err


@pytest.mark.parametrize("where", ["run", "run/sub"])
def test_output_that_is_a_file_is_a_clear_error(tmp_path, capsys, where):
    (tmp_path / "run").write_text("not a folder")
    assert run_train(*TINY, "--output", str(tmp_path / where)) == 2
    assert f"train.output_dir: {tmp_path / 'run'} is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "run").read_text() == "not a folder"


# --------------------------------------------------------------------------- bad config, determinism


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.image_size=30"], "data.image_size"),
        (["masking.ratio=0.999"], "masking.ratio"),
        (["objectives.latent.weight=0", "objectives.pixel.weight=1", "objectives.cls.weight=1"], "objectives.cls.source"),
        (["target.mode=none"], "target.mode"),
        (["objectives.latent.similarity.gamma=[0.5]"], "objectives.latent.similarity.gamma"),
        (["train.batch_size=15", "train.grad_accum=2"], "train.batch_size"),
    ],
)
def test_impossible_configs_fail_before_the_first_step(tmp_path, capsys, overrides, key):
    assert run_train(*TINY, "--output", str(tmp_path / "run"), *overrides) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_same_seed_same_losses_other_seed_other_losses(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_train(*TINY, "--output", str(tmp_path / name), "train.max_steps=3", f"train.seed={seed}") == 0
    a, b, c = (losses(tmp_path / n) for n in "abc")
    assert a == b
    assert a != c


def test_a_fresh_run_never_overwrites_another_runs_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "train.max_steps=4") == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert _train(out, "train.max_steps=2") == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
