"""mimkit reproduce: the plan, its commands, the claim rules, the report, and the
run / skip / resume / fail loop (tiny real runs on the embedded slice, and a fake runner)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from mimkit.config import load_config
from mimkit.checkpoint import step_dirs
from mimkit.finetune.config import load_finetune_config
from mimkit.reproduce.claims import evaluate_claims
from mimkit.reproduce.cli import main, parse_epochs
from mimkit.reproduce.commands import Settings, Pending, common_overrides, display, eval_command, planned_config, preset_expr, run_overrides, sweep_epochs, train_command
from mimkit.reproduce.plan import DATASETS, MAIN_PRESETS, RunSpec, SCALES, build_plan, progression, sweep_name
from mimkit.reproduce.report import RunRecord, nn_curve, render_results
from mimkit.reproduce.runner import Budget
from mimkit.reproduce.state import RunState
from mimkit.resume import config_diff


ROOT = Path(__file__).resolve().parents[1]



EVAL_ARGS = "--max-train 200 --max-eval 100 --protocols nn sim --num-workers 0 --batch-size 100"
TINY = ["--cifar10", "embedded", "--imagenette", "embedded", "--overlay", "tiny", "--batch", "16", "--tables", "main",
        "--datasets", "cifar10", "--eval-args", EVAL_ARGS, "train.max_steps=2", "data.num_workers=0", "train.trackers=[none]"]


def settings(tmp_path: Path) -> Settings:
    return Settings(sources={"cifar10": "embedded", "imagenette": "embedded"}, out=tmp_path / "runs")


def cli(tmp_path: Path, *extra: str) -> list[str]:
    return [*TINY, "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results.md"), *extra]


def never(argv, log_path, tick):  # a runner for invocations that must start nothing
    raise AssertionError(f"unexpected command: {argv}")


def fake_runner(fail: set[str] = frozenset()):
    """Writes what mimkit train / evaluate would (summary.json / metrics.json), or fails for runs named in ``fail``."""
    calls: list[list[str]] = []

    def run(argv, log_path, tick):
        calls.append(argv)
        if argv[argv.index("mimkit") + 1] == "train":
            out = ROOT / argv[argv.index("--output") + 1]
            if out.name in fail:
                log_path.write_text("Traceback (most recent call last):\nRuntimeError: boom\n")
                return 3
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps({"steps": 2, "epochs": 0.1}))
        else:
            target = ROOT / argv[argv.index("--out") + 1]
            target.write_text(json.dumps({"nn": 30.0, "knn": 31.0, "linear": None, "sim": 0.4}))
        return 0

    run.calls = calls
    return run


# --------------------------------------------------------------------------- the plan


def test_plan_has_the_five_presets_per_dataset_and_the_progression():
    plan = build_plan()
    mains = [t for t in plan.tables if t.key == "main"]
    assert [t.dataset for t in mains] == ["cifar10", "imagenette"]
    for t in mains:
        assert [r.run for r in t.rows] == ["naive_latent_mim", "mae", "latent_mim", "pilamim", "capi"]
    (abl,) = [t for t in plan.tables if t.key == "ablation"]
    assert abl.dataset == "imagenette" and len(abl.rows) == 11
    assert abl.rows[0].run == "naive_latent_mim" and abl.rows[-1].run == "latent_mim"
    assert len(plan.runs) == len({r.key for r in plan.runs}) == 10 + 9  # first and last progression rows are shared
    assert not any(r.kind == "finetune" for r in plan.runs)  # the gpu scale has no fine-tuning preset yet
    only_main = build_plan(["main"])
    assert len(only_main.runs) == 10 and all(t.key == "main" for t in only_main.tables)


@pytest.mark.parametrize("dataset", ["cifar10", "imagenette"])
def test_progression_switches_one_thing_per_row_and_ends_at_latent_mim(dataset, tmp_path):
    s, ds = settings(tmp_path), DATASETS[dataset]
    plan = build_plan(["main", "ablation"], ablation_dataset=dataset)
    (abl,) = [t for t in plan.tables if t.key == "ablation"]
    configs = [planned_config(plan.run(dataset, row.run), s) for row in abl.rows]
    steps = progression(ds.gap)
    for prev, cur, step in zip(configs, configs[1:], steps[1:]):
        assert config_diff(prev, cur) == sorted(item.split("=")[0] for item in step.adds), step.name
    cumulative = [item for step in steps for item in step.adds]
    walked = load_config("naive_latent_mim", common_overrides(ds, s) + cumulative).to_dict()
    assert config_diff(walked, planned_config(plan.run(dataset, "latent_mim"), s)) == []


def test_probes_change_one_setting_of_their_preset_and_run_only_when_named(tmp_path):
    from mimkit.reproduce.plan import PROBES

    assert not any(t.key == "probes" for t in build_plan(scale=MICRO).tables)  # not in the default tables
    plan = build_plan(["probes"], scale=MICRO)
    (table,) = plan.tables
    assert table.dataset == "cifar10" and [r.run for r in table.rows] == [
        "capi", "probe/capi_momentum0.99", "probe/capi_predict20", "pilamim", "probe/pilamim_copied_teacher"]
    assert [r.against for r in table.rows] == [None, "capi", "capi", None, "pilamim"]
    assert {r.name for r in plan.runs if r.kind == "sweep"} == {sweep_name(p, lr) for p in ("capi", "pilamim") for lr in MICRO.sweep.lrs}
    s = micro_settings(tmp_path, picked={"cifar10/capi": 0.0015, "cifar10/pilamim": 0.0005})
    for probe in PROBES:
        run = plan.run("cifar10", probe.name)
        assert run.lr_from == probe.preset and run.eval_args == ("--protocols", "nn", "knn", "sim")
        mine, theirs = planned_config(run, s), planned_config(plan.run("cifar10", probe.preset), s)
        assert config_diff(mine, theirs) == sorted(a.split("=")[0] for a in probe.adds), probe.name
    with pytest.raises(Pending):
        planned_config(plan.run("cifar10", "probe/capi_momentum0.99"), micro_settings(tmp_path))  # waits for capi's sweep


def test_a_probe_row_is_compared_with_its_presets_run(tmp_path):
    s = micro_settings(tmp_path)
    plan = build_plan(["probes"], scale=MICRO)
    (table,) = plan.tables
    records = {r.key: RunRecord(RunState()) for r in plan.runs}
    done = RunState(trained=True, evaluated=True)
    for name, nn in (("capi", 20.0), ("probe/capi_momentum0.99", 23.5), ("probe/capi_predict20", 19.0), ("pilamim", 27.0)):
        records[f"cifar10/{name}"] = RunRecord(done, {"nn": nn})
    from mimkit.reproduce.report import table_md

    rows = {line.split(" | ")[3]: line.split(" | ") for line in table_md(table, records, plan, s)[2:]}
    assert rows["`probe/capi_momentum0.99`"][5] == "+3.5" and rows["`probe/capi_predict20`"][5] == "-1.0"
    assert rows["`capi`"][5] == "" and rows["`probe/pilamim_copied_teacher`"][5] == "—"
    assert "fine-tune" not in table_md(table, records, plan, s)[0]


def test_geometry_is_a_14x14_grid_with_the_papers_patch_to_gap_ratio(tmp_path):
    s = settings(tmp_path)
    for ds in DATASETS.values():
        assert ds.grid == 14 and ds.patch == 4 * ds.gap
        latent = load_config("latent_mim", run_overrides(RunSpec(ds.key, "latent_mim", "latent_mim", (f"masking.gap={ds.gap}",)), s))
        assert (latent.model.img_size, latent.model.patch_size, latent.masking.gap) == (ds.native, ds.patch, ds.gap)
        assert latent.model.name == "vit_tiny_patch16_224" and latent.train.batch_size == 256
    assert [DATASETS["cifar10"].crop(g) for g in (0, 1)] == [56, 70]
    assert [DATASETS["imagenette"].crop(g) for g in (0, 2)] == [112, 140]


def test_commands_carry_the_plan_overrides_and_resume(tmp_path):
    s = Settings(sources={"cifar10": "data/c", "imagenette": "data/i"}, out=ROOT / "runs" / "x", processes=2,
                    overrides=("train.max_steps=5",), eval_args=("--max-train", "10"), workers=3)
    run = build_plan().run("imagenette", "latent_mim")
    train = train_command(run, s, resume=True)
    assert train[:2] == [sys.executable, "-m"] and train[train.index("--num_processes") + 1] == "2"
    assert train[train.index("--output") + 1] == "runs/x/imagenette/latent_mim" and "--resume" in train
    assert train[-2:] == ["masking.gap=2", "train.max_steps=5"] and "data.num_workers=3" in train
    assert "train.save_every=500" in train  # the gpu scale's checkpoint cadence
    ev = eval_command(run, s)
    assert ev[ev.index("--out") + 1] == "runs/x/imagenette/latent_mim/metrics.json" and ev[-2:] == ["--max-train", "10"]
    assert display(train).startswith("python -m accelerate.commands.launch")


def test_epochs_option():
    assert parse_epochs("7") == {"cifar10": 7, "imagenette": 7}
    assert parse_epochs("imagenette=50") == {"cifar10": 4, "imagenette": 50}
    with pytest.raises(SystemExit):
        parse_epochs("imagenet=3")


# --------------------------------------------------------------------------- claims and report


GOOD = {
    "naive_latent_mim": {"nn": 12.0, "sim": 0.97, "linear": 20.0},
    "mae": {"nn": 30.0, "linear": 50.0, "sim": 0.3, "finetune": 60.0},
    "latent_mim": {"nn": 32.0, "linear": 50.0, "sim": 0.4, "finetune": 59.0},
    "pilamim": {"nn": 28.0, "linear": 49.0, "sim": 0.3, "finetune": 58.0},
    "capi": {"nn": 29.0, "linear": 48.0, "sim": 0.3, "finetune": 57.0},
}


def verdicts(metrics, num_classes=10):
    return [c.verdict for c in evaluate_claims(metrics, num_classes, finetune=True)]


def test_claim_rules_on_hand_made_metrics():
    assert verdicts(GOOD) == ["reproduced"] * 5  # every comparison exactly at its threshold
    worse = {
        "naive_latent_mim": {"nn": 15.1, "sim": 0.97},  # NN above chance + 5
        "mae": {"nn": 30.0, "linear": 50.0, "finetune": 60.0},
        "latent_mim": {"nn": 31.9, "linear": 49.9, "finetune": 58.9},
        "pilamim": {"linear": 48.9},
    }
    assert verdicts(worse) == ["not reproduced"] * 5
    assert verdicts({**GOOD, "naive_latent_mim": {"nn": 10.0, "sim": 0.89}})[0] == "not reproduced"
    assert verdicts({**GOOD, "naive_latent_mim": {"nn": 24.0, "sim": 0.95}}, num_classes=5)[0] == "reproduced"  # chance 20
    pending = verdicts({"mae": GOOD["mae"], "latent_mim": {"nn": 40.0}, "pilamim": None})
    assert pending[0] == "pending (missing: sim of naive_latent_mim, nn of naive_latent_mim)"
    assert pending[1] == "reproduced"
    assert pending[2].startswith("pending (missing: linear of latent_mim")
    assert pending[3].startswith("pending") and "linear of pilamim" in pending[3]


def test_report_shows_missing_failed_and_claims(tmp_path):
    s = settings(tmp_path)
    plan = build_plan()
    records = {r.key: RunRecord(RunState()) for r in plan.runs}
    done = RunState(trained=True, evaluated=True)
    for name, metrics in GOOD.items():
        records[f"cifar10/{name}"] = RunRecord(done, metrics, {"steps": 10},
                                                  {"attempts": [{"phase": "train", "command": f"python -m mimkit train {name}", "seconds": 75.0,
                                                                 "returncode": 0, "device": "GPU X"}]})
    records["imagenette/mae"] = RunRecord(RunState(), timing={"attempts": [
        {"phase": "train", "command": "python -m mimkit train mae", "seconds": 3.0, "returncode": 3, "device": "GPU Y, one of 2 runs"}]})
    text = render_results(plan, records, s, "mimkit reproduce")
    assert "| `latent_mim` | 32.0 | — | 50.0 | 0.400 | 1m15s | — | done |" in text
    assert "failed (train, exit 3)" in text and "Devices: GPU X; GPU Y, one of 2 runs\n" in text
    assert "**CIFAR-10**" in text and text.count("**reproduced**") == 4
    assert "the naive baseline collapses" in text and "**pending (missing:" in text  # Imagenette
    assert "## Ablation — the Latent MIM challenge progression on Imagenette" in text
    assert "python -m mimkit train latent_mim" in text  # a command that ran
    assert "python -m mimkit train --preset pilamim --data embedded" in text and "# planned" in text  # the others as planned


# --------------------------------------------------------------------------- the loop with a fake runner


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, capsys):
    args = ["--dry-run", "--cifar10", "embedded", "--imagenette", "embedded", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results.md")]
    assert main(args, runner=never) == 0
    out = capsys.readouterr().out
    for run in build_plan().runs:
        assert f"# {run.key} [new]" in out
        assert f"--output {tmp_path / 'runs' / run.dataset / run.name} " in out
        assert f"--out {tmp_path / 'runs' / run.dataset / run.name / 'metrics.json'}" in out
    assert out.count("python -m mimkit train ") == out.count("python -m mimkit evaluate ") == 19
    assert list(tmp_path.iterdir()) == []


def test_failed_run_is_reported_and_the_next_one_runs(tmp_path, capsys):
    runner = fake_runner(fail={"naive_latent_mim"})
    export = tmp_path / "export"
    assert main(cli(tmp_path, "--only", "naive_latent_mim", "mae", "--export", str(export)), runner=runner) == 1
    out = capsys.readouterr().out
    assert "[cifar10/naive_latent_mim] FAILED in train (exit 3)" in out and "RuntimeError: boom" in out
    assert len(runner.calls) == 3  # naive train, mae train + eval
    text = (tmp_path / "results.md").read_text()
    assert "| `naive_latent_mim` | — | — | — | — |" in text and "failed (train, exit 3)" in text
    assert "| `mae` | 30.0 | 31.0 | — | 0.400 |" in text
    timing = json.loads((tmp_path / "runs" / "cifar10" / "naive_latent_mim" / "timing.json").read_text())
    assert [a["returncode"] for a in timing["attempts"]] == [3]
    assert (export / "results.md").read_text() == text
    assert (export / "runs" / "cifar10" / "mae" / "metrics.json").is_file()


def test_a_run_another_invocation_runs_is_left_to_it_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    d = tmp_path / "runs" / "cifar10" / "mae"
    d.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (d / "running.lock").write_text(f"{other.pid} {socket.gethostname()}\n")
        assert main(cli(tmp_path, "--only", "mae"), runner=never) == 0
        assert f"[cifar10/mae] not started: another mimkit reproduce runs it (pid {other.pid} on " in capsys.readouterr().out
        assert main(cli(tmp_path, "--only", "mae", "--dry-run"), runner=never) == 0
        assert f"# cifar10/mae [new, running in pid {other.pid} on " in capsys.readouterr().out
    finally:
        other.kill()
        other.wait()
    runner = fake_runner()  # the holder has exited: its lock is taken over, and removed once the run ends
    assert main(cli(tmp_path, "--only", "mae"), runner=runner) == 0
    assert len(runner.calls) == 2 and (d / "metrics.json").is_file() and not (d / "running.lock").exists()
    other_host = tmp_path / "runs" / "cifar10" / "latent_mim"  # another host's process cannot be checked: respected
    other_host.mkdir()
    (other_host / "running.lock").write_text("123 another-host\n")
    assert main(cli(tmp_path, "--only", "latent_mim"), runner=never) == 0
    assert "another mimkit reproduce runs it (pid 123 on another-host)" in capsys.readouterr().out


def test_time_budget_starts_nothing_once_spent(tmp_path, capsys):
    assert main(cli(tmp_path, "--time-budget", "0"), runner=never) == 0
    assert "not started: time budget spent" in capsys.readouterr().out
    assert "| `mae` | — |" in (tmp_path / "results.md").read_text()


def test_budget_refuses_a_run_that_would_end_past_it():
    budget = Budget(limit_s=100.0)
    assert budget.refusal("cifar10") is None
    budget.record("cifar10", 150.0)
    assert "on average" in budget.refusal("cifar10")
    assert budget.refusal("imagenette") is None


def test_an_empty_selection_is_one_error_line(tmp_path, capsys):
    args = cli(tmp_path, "--tables", "ablation", "--datasets", "cifar10", "--dry-run")
    assert main(args, runner=never) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no runs selected" in err and "--ablation-dataset imagenette" in err
    assert main(cli(tmp_path, "--tables", "ablation", "--datasets", "cifar10", "--ablation-dataset", "cifar10", "--dry-run"),
                runner=never) == 0


def test_missing_dataset_dir_is_named(tmp_path, capsys):
    args = ["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r.md")]
    assert main(args, runner=never) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "cifar10") in err and str(tmp_path / "nowhere" / "imagenette") in err


# --------------------------------------------------------------------------- real tiny runs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """naive_latent_mim and mae on the embedded slice: 2 steps of the tiny overlay, a small eval."""
    tmp = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        rc = main(cli(tmp, "--only", "naive_latent_mim", "mae"))
    return tmp, rc


@pytest.mark.slow
def test_two_rows_write_metrics_timing_and_the_report(two_runs):
    tmp, rc = two_runs
    assert rc == 0
    for name in ("naive_latent_mim", "mae"):
        d = tmp / "runs" / "cifar10" / name
        metrics = json.loads((d / "metrics.json").read_text())
        assert isinstance(metrics["nn"], float) and isinstance(metrics["sim"], float)
        timing = json.loads((d / "timing.json").read_text())
        assert [(a["phase"], a["returncode"]) for a in timing["attempts"]] == [("train", 0), ("eval", 0)]
        assert all(a["seconds"] > 0 and a["device"] for a in timing["attempts"])
        assert timing["attempts"][0]["command"].startswith("python -m mimkit train --preset " + name + "+tiny --data embedded")
        assert yaml.safe_load((d / "config.yaml").read_text())["model"]["img_size"] == 56
    text = (tmp / "results.md").read_text()
    for name in ("naive_latent_mim", "mae"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.endswith("| done |") and "| — | — | — |" not in row
    assert "## Claims" in text and "**pending (missing: linear of latent_mim" in text


@pytest.mark.slow
def test_second_invocation_skips_finished_runs(two_runs, capsys):
    tmp, _ = two_runs
    d = tmp / "runs" / "cifar10" / "mae"
    before = {p.name: p.stat().st_mtime_ns for p in (d / "summary.json", d / "metrics.json", d / "timing.json")}
    assert main(cli(tmp, "--only", "naive_latent_mim", "mae"), runner=never) == 0
    out = capsys.readouterr().out
    assert "[cifar10/mae] done, skipped" in out and "all selected runs are complete" in out
    assert before == {p.name: p.stat().st_mtime_ns for p in (d / "summary.json", d / "metrics.json", d / "timing.json")}
    assert main(cli(tmp, "--only", "mae", "--report-only", "--results", str(tmp / "again.md")), runner=never) == 0
    assert "| `mae` |" in (tmp / "again.md").read_text()


@pytest.mark.slow
def test_a_different_config_in_the_run_dir_is_refused(two_runs, capsys):
    tmp, _ = two_runs
    assert main(cli(tmp, "--only", "mae", "train.max_steps=3"), runner=never) == 1
    assert "[cifar10/mae] STALE" in capsys.readouterr().out
    assert "stale config (train.max_steps)" in (tmp / "results.md").read_text()


@pytest.mark.slow
def test_checkpoint_without_summary_is_resumed(two_runs, tmp_path):
    src, _ = two_runs
    shutil.copytree(src / "runs", tmp_path / "runs")
    d = tmp_path / "runs" / "cifar10" / "naive_latent_mim"
    (d / "summary.json").unlink()
    shutil.rmtree(d / "encoder")
    assert step_dirs(d)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        assert main(cli(tmp_path, "--only", "naive_latent_mim")) == 0
    attempts = json.loads((d / "timing.json").read_text())["attempts"]
    assert [(a["phase"], a["resumed"]) for a in attempts] == [("train", False), ("eval", False), ("train", True)]
    assert " --resume latest " in attempts[-1]["command"] and attempts[-1]["returncode"] == 0
    assert (d / "summary.json").is_file() and (d / "encoder").is_dir()


# --------------------------------------------------------------------------- the micro scale


MICRO = SCALES["micro"]


def micro_settings(tmp_path: Path, **kw) -> Settings:
    return Settings(sources={"cifar10": "embedded", "imagenette": "embedded"}, out=tmp_path / "runs", scale=MICRO, **kw)


def test_micro_plan_has_baselines_sweeps_the_five_presets_and_their_fine_tuning():
    plan = build_plan(["main"], scale=MICRO)
    (cifar, _) = [t for t in plan.tables if t.key == "main"]
    assert [r.run for r in cifar.rows] == ["init", "pixels", "naive_latent_mim", "mae", "latent_mim", "pilamim", "capi"]
    runs = [r for r in plan.runs if r.dataset == "cifar10"]
    sweeps = [r for r in runs if r.kind == "sweep"]
    assert len(sweeps) == 5 * len(MICRO.sweep.lrs)
    tuned = [r for r in runs if r.kind == "finetune"]  # each right after the run it fine-tunes
    assert [(r.source, r.name, r.preset) for r in tuned] == [
        ("init", "init/finetune-micro-scratch", "micro"), ("mae", "mae/finetune-micro", "micro"),
        ("latent_mim", "latent_mim/finetune-micro", "micro"), ("pilamim", "pilamim/finetune-micro", "micro"),
        ("capi", "capi/finetune-micro", "micro")]
    assert all(runs[runs.index(r) - 1].name == r.source for r in tuned)
    assert {r.preset for r in plan.runs if r.kind == "finetune" and r.dataset == "imagenette"} == {"micro64"}
    # each preset's sweep runs right before its table run, which takes its lr from that sweep
    names = [r.name for r in runs]
    for preset in MAIN_PRESETS:
        i = names.index(preset)
        assert names[i - 3:i] == [sweep_name(preset, lr) for lr in MICRO.sweep.lrs]
        assert plan.run("cifar10", preset).lr_from == preset
    abl = build_plan(["ablation"], "cifar10", scale=MICRO)
    assert all(r.lr_from in ("latent_mim", "naive_latent_mim") for r in abl.runs if r.kind == "train")
    assert {r.preset for r in abl.runs if r.kind == "sweep"} == {"naive_latent_mim", "latent_mim"}


@pytest.mark.parametrize("dataset, overlay, size, patch, gap", [("cifar10", "micro", 32, 4, 1), ("imagenette", "micro64", 64, 8, 2)])
def test_micro_runs_use_the_overlay_geometry_and_the_picked_lr(tmp_path, dataset, overlay, size, patch, gap):
    plan = build_plan(["main"], scale=MICRO)
    run = plan.run(dataset, "latent_mim")
    with pytest.raises(Pending):
        planned_config(run, micro_settings(tmp_path))
    s = micro_settings(tmp_path, picked={f"{dataset}/latent_mim": 0.0045})
    cfg = load_config(preset_expr(run, s), run_overrides(run, s))
    assert preset_expr(run, s) == f"latent_mim+{overlay}"
    assert (cfg.model.embed_dim, cfg.model.img_size, cfg.model.patch_size, cfg.masking.gap) == (192, size, patch, gap)
    assert cfg.train.base_lr == 0.0045 and cfg.train.eval_every_epochs == 1 and cfg.data.holdout == 0
    sweep = plan.run(dataset, sweep_name("latent_mim", 0.0005))
    swept = load_config(preset_expr(sweep, s), run_overrides(sweep, s))
    assert swept.data.holdout == MICRO.datasets[dataset].holdout > 0 and swept.train.base_lr == 0.0005
    assert swept.train.epochs == sweep_epochs(MICRO.datasets[dataset].epochs, MICRO.sweep) < cfg.train.epochs
    assert config_diff(swept.to_dict(), cfg.to_dict()) == [
        "data.holdout", "train.base_lr", "train.epochs", "train.eval_every_epochs", "train.eval_knn_train", "train.warmup_epochs"]


def micro_runner(nn_by_lr: dict[float, float]):
    """Writes summary.json (a sweep run scores nn from ``nn_by_lr``) / metrics.json."""
    calls: list[list[str]] = []

    def run(argv, log_path, tick):
        calls.append(argv)
        if argv[argv.index("mimkit") + 1] == "train":
            out = ROOT / argv[argv.index("--output") + 1]
            out.mkdir(parents=True, exist_ok=True)
            lr = float(next(a for a in reversed(argv) if a.startswith("train.base_lr=")).split("=")[1]) if any(
                a.startswith("train.base_lr=") for a in argv) else None
            (out / "summary.json").write_text(json.dumps({"steps": 2, "epochs": 1, "nn": nn_by_lr.get(lr, 0.0)}))
            (out / "encoder").mkdir(exist_ok=True)
            (out / "encoder" / "model.safetensors").write_bytes(b"")
            (out / "log.jsonl").write_text("".join(json.dumps({"step": 10 * i, "epoch": i, "eval/nn": 20.0 + i}) + "\n"
                                                   for i in range(1, 4)))
        elif argv[argv.index("mimkit") + 1] == "finetune":  # what mimkit finetune leaves: its config and scores
            out = ROOT / argv[argv.index("--output") + 1]
            cfg = load_finetune_config(argv[argv.index("--preset") + 1], [f"checkpoint={argv[argv.index('--checkpoint') + 1]}",
                                       f"train.output_dir={argv[argv.index('--output') + 1]}", *(a for a in argv if "=" in a)])
            out.mkdir(parents=True, exist_ok=True)
            (out / "finetune.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
            top1 = 60.0 if cfg.model.from_scratch else 70.0
            (out / "finetune.json").write_text(json.dumps({"steps": 3, "epochs": 1, "top1": top1, "top5": 99.0}))
        else:
            target = ROOT / argv[argv.index("--out") + 1]
            target.write_text(json.dumps({"nn": 30.0, "knn": 31.0, "linear": 40.0, "sim": 0.4}))
        return 0

    run.calls = calls
    return run


def test_micro_fine_tunes_the_trained_rows_and_the_init_row_from_scratch(tmp_path, capsys):
    runner = micro_runner({0.0005: 20.0, 0.0015: 24.0, 0.0045: 22.0})
    args = ["--scale", "micro", "--cifar10", "embedded", "--tables", "main", "--datasets", "cifar10", "--only", "init",
            "mae", *(sweep_name("mae", lr) for lr in MICRO.sweep.lrs), "latent_mim/finetune-micro",  # init's and mae's fine-tuning come with those runs
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results.md")]
    assert main(args, runner=runner) == 0
    out = capsys.readouterr().out
    assert "[cifar10/latent_mim/finetune-micro] not started: cifar10/latent_mim/finetune-micro waits for cifar10/latent_mim" in out
    ft = [c for c in runner.calls if c[c.index("mimkit") + 1] == "finetune"]
    assert [c[c.index("--checkpoint") + 1].split("/")[-1] for c in ft] == ["init", "mae"]
    assert "model.from_scratch=true" in ft[0] and "model.from_scratch=true" not in ft[1]
    # micro checkpoints every 50 steps (about 5 minutes here), pretraining and fine-tuning alike
    pretrain = [c for c in runner.calls if c[c.index("mimkit") + 1] == "train"]
    assert all(f"train.save_every={MICRO.save_every}" in c for c in ft + pretrain) and MICRO.save_every == 50
    assert ft[1][ft[1].index("--output") + 1].endswith("cifar10/mae/finetune-micro") and "--resume" not in ft[1]
    timing = json.loads((tmp_path / "runs" / "cifar10" / "mae" / "finetune-micro" / "timing.json").read_text())
    assert [a["phase"] for a in timing["attempts"]] == ["finetune"]
    text = (tmp_path / "results.md").read_text()
    head = "| run | NN | k-NN | linear | Sim | fine-tune | base lr | train | eval | fine-tune time | status |"
    assert head in text and "| encoder at initialisation | 30.0 | 31.0 | 40.0 | 0.400 | 60.0 |" in text
    assert "| `mae` | 30.0 | 31.0 | 40.0 | 0.400 | 70.0 | 0.0015 |" in text and "`mimkit finetune --preset micro`" in text
    # the dry run prints the command each run would run next: none for what is done, mimkit finetune for a fine-tuning
    assert main([*args, "--dry-run"], runner=never) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "# cifar10/mae/finetune-micro [done]" in lines and not any(" train " in x or " evaluate " in x for x in lines)
    scores = tmp_path / "runs" / "cifar10" / "mae" / "finetune-micro" / "finetune.json"
    scores.rename(scores.with_suffix(".bak"))
    assert main([*args, "--dry-run"], runner=never) == 0
    lines = capsys.readouterr().out.splitlines()
    i = lines.index("# cifar10/mae/finetune-micro [new]")
    assert lines[i + 1].startswith("python -m mimkit finetune --preset micro --checkpoint ")
    # a run trained on another machine has no weights here: its fine-tuning waits and says why
    weights = tmp_path / "runs" / "cifar10" / "mae" / "encoder" / "model.safetensors"
    weights.rename(weights.with_suffix(".bak"))
    assert main([*args, "--dry-run"], runner=never) == 0
    assert "# cifar10/mae/finetune-micro [waits: cifar10/mae/finetune-micro needs the weights of cifar10/mae, " in (
        capsys.readouterr().out)
    scores.with_suffix(".bak").rename(scores)  # a finished fine-tuning needs its weights no more
    assert main([*args, "--dry-run"], runner=never) == 0
    assert "# cifar10/mae/finetune-micro [done]" in capsys.readouterr().out.splitlines()
    assert main(args, runner=never) == 0 and "[cifar10/mae/finetune-micro] done, skipped" in capsys.readouterr().out
    weights.with_suffix(".bak").rename(weights)
    # a second invocation skips what is done; a fine-tuning config that changed makes its run stale
    saved = tmp_path / "runs" / "cifar10" / "mae" / "finetune-micro" / "finetune.yaml"
    saved.write_text(saved.read_text().replace("layer_decay: 0.75", "layer_decay: 0.5"))
    assert main(args, runner=never) == 1
    assert "[cifar10/mae/finetune-micro] STALE" in capsys.readouterr().out
    assert "| `cifar10/mae/finetune-micro` | 3 | 1 | — |" in text and "stale config" not in text
    assert "stale config (optim.layer_decay)" in (tmp_path / "results.md").read_text()
    # a killed fine-tuning resumes
    shutil.rmtree(saved.parent)
    (saved.parent / "checkpoints" / "step_00000002").mkdir(parents=True)
    (saved.parent / "checkpoints" / "step_00000002" / "trainer_state.json").write_text("{}")
    assert main(args, runner=runner) == 0
    assert "--resume" in runner.calls[-1] and runner.calls[-1][runner.calls[-1].index("mimkit") + 1] == "finetune"


def test_jobs_run_independent_runs_at_once_and_start_a_waiting_run_once_what_it_needs_is_done(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # restored after the test; unset, so --jobs sets it
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    inner = micro_runner({0.0005: 20.0, 0.0015: 24.0, 0.0045: 22.0})
    lock, events, in_flight, most, threads = threading.Lock(), [], [0], [0], set()

    def runner(argv, log_path, tick):
        where = argv[argv.index("--output" if "--output" in argv else "--out") + 1]
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            events.append(("start", where))
            threads.add(os.environ.get("OMP_NUM_THREADS"))
        time.sleep(0.3)
        rc = inner(argv, log_path, tick)
        with lock:
            in_flight[0] -= 1
            events.append(("end", where))
        return rc

    args = ["--scale", "micro", "--cifar10", "embedded", "--tables", "main", "--datasets", "cifar10", "--jobs", "2", "--only",
            "init", "mae", *(sweep_name("mae", lr) for lr in MICRO.sweep.lrs),
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results.md")]
    assert main(args, runner=runner) == 0
    assert most[0] == 2 and threads == {"1"}
    assert "one of 2 runs at a time (1 thread each)" in capsys.readouterr().out
    table = next(i for i, (kind, where) in enumerate(events) if kind == "start" and where.endswith("/cifar10/mae"))
    sweeps_done = [i for i, (kind, where) in enumerate(events) if kind == "end" and "/sweep/mae/" in where]
    assert len(sweeps_done) == 3 and max(sweeps_done) < table  # the table run waited for its lr sweep
    assert json.loads((tmp_path / "runs" / "cifar10" / "mae" / "metrics.json").read_text())["nn"] == 30.0


def test_sigterm_kills_the_runs_in_flight_before_the_runner_exits(tmp_path):
    from mimkit.reproduce.runner import RUNNING, run_logged, terminate

    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    worker = threading.Thread(target=run_logged, args=(argv, tmp_path / "train.log", lambda elapsed: None))
    worker.start()
    deadline = time.monotonic() + 30
    while not RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    (proc,) = RUNNING
    with pytest.raises(SystemExit) as stop:
        terminate(15)
    assert stop.value.code == 143
    worker.join(timeout=30)
    assert not worker.is_alive() and proc.returncode is not None and not RUNNING


def test_collapse_verdict_reads_the_last_cluster_statistics(tmp_path):
    from mimkit.reproduce.report import collapse_verdict

    d = tmp_path / "capi"
    d.mkdir()
    assert collapse_verdict(d) is None  # nothing logged: no verdict
    (d / "config.yaml").write_text(yaml.safe_dump({"objectives": {"cluster": {"prototypes": 1024}}}))
    log = [{"step": 10, "cluster/prototypes_used": 3.0, "cluster/entropy": 6.9}, {"step": 20, "loss": 1.0},
           {"step": 30, "cluster/prototypes_used": 400.0, "cluster/entropy": 2.5}]
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    assert collapse_verdict(d) == ("400 of 1024 prototypes in use, assignment entropy 2.50 nats (uniform: 6.93) at step 30 "
                                   "— **no collapse**")
    for used, entropy in ((400.0, 6.6), (10.0, 2.5)):  # near-uniform assignments; under K / 100 prototypes in use
        (d / "log.jsonl").write_text(json.dumps({"step": 5, "cluster/prototypes_used": used, "cluster/entropy": entropy}) + "\n")
        assert collapse_verdict(d).endswith("**collapsed**")


def test_micro_sweep_picks_the_best_holdout_nn_then_trains_the_table_run(tmp_path, capsys):
    runner = micro_runner({0.0005: 20.0, 0.0015: 24.0, 0.0045: 24.0})  # a tie: the smaller lr wins
    args = ["--scale", "micro", "--cifar10", "embedded", "--tables", "main", "--datasets", "cifar10", "--only", "init",
            "pixels", "mae", *(sweep_name("mae", lr) for lr in MICRO.sweep.lrs),
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results.md")]
    assert main(args, runner=runner) == 0
    trains = [c for c in runner.calls if c[c.index("mimkit") + 1] == "train"]
    assert len(trains) == 4 and "train.base_lr=0.0015" in trains[-1] and "--output" in trains[-1]
    assert trains[-1][trains[-1].index("--output") + 1].endswith("cifar10/mae")
    evals = [c for c in runner.calls if c[c.index("mimkit") + 1] == "evaluate"]
    assert [c[c.index("--checkpoint") + 2:c.index("--checkpoint") + 4] for c in evals[:2]] == [["--baseline", "init"],
                                                                                              ["--baseline", "pixels"]]
    assert yaml.safe_load((tmp_path / "runs" / "cifar10" / "init" / "config.yaml").read_text())["model"]["embed_dim"] == 192
    text = (tmp_path / "results.md").read_text()
    assert "| `mae` | 20.0 | 24.0 | 24.0 | 0.0015 |" in text  # the sweep table
    assert "| encoder at initialisation | 30.0 |" in text and "| raw pixels | 30.0 |" in text
    assert "every non-naive preset's NN beats raw pixels" in text
    png = tmp_path / "results" / "nn-cifar10-main.png"
    if importlib.util.find_spec("matplotlib"):
        assert png.is_file() and "![NN during training, Main table — CIFAR-10](results/nn-cifar10-main.png)" in text
    assert nn_curve(tmp_path / "runs" / "cifar10" / "mae", 256) == [(2.56, 21.0), (5.12, 22.0), (7.68, 23.0)]


def test_the_report_names_the_runs_that_start_from_other_weights_than_the_init_row(tmp_path):
    """init_encoder of each preset against the init row's: equal weights exactly when no start key differs."""
    from mimkit.eval.baselines import init_encoder
    from mimkit.reproduce.report import start_differences, starts_md

    s = micro_settings(tmp_path)
    plan = build_plan(["main"], scale=MICRO)
    init = plan.run("cifar10", "init")
    assert start_differences(plan.run("cifar10", "mae"), init, s) == []
    assert start_differences(plan.run("cifar10", "capi"), init, s) == ["model.init: timm"]
    assert start_differences(plan.run("cifar10", "latent_mim"), init, s) == ["model.sincos_coords: linspace"]
    table = next(t for t in plan.tables if t.dataset == "cifar10")
    text = " ".join(starts_md(table, plan, s))
    assert "`mae` starts from" in text and "`pilamim` (model.pos_embed: learned, model.init: timm)" in text
    assert "`mae` (" not in text
    weights = {p: init_encoder(load_config(f"{p}+tiny")).state_dict() for p in ("mae", "latent_mim", "capi")}
    weights["mae_again"] = init_encoder(load_config("mae+tiny", ["masking.ratio=0.5", "model.drop_path_rate=0.1"])).state_dict()

    def same(a: str, b: str) -> bool:
        return all(torch.equal(weights[a][k], weights[b][k]) for k in weights[a])

    assert same("mae", "mae_again")  # keys outside the start leave it alone
    assert not same("mae", "capi") and not same("mae", "latent_mim")


def test_a_sweep_whose_best_lr_is_on_its_edge_grows_one_grid_step_at_a_time():
    sweep = MICRO.sweep  # lrs 5e-4, 1.5e-3, 4.5e-3; at most 2 beyond them
    assert sweep.next_lr({5e-4: 21.5, 1.5e-3: 22.0, 4.5e-3: 21.5}) is None  # enclosed: settled
    assert sweep.next_lr({5e-4: 29.4, 1.5e-3: 29.2, 4.5e-3: 16.1}) == 0.000167  # best at the bottom: 5e-4 / 3
    assert sweep.next_lr({5e-4: 20.0, 1.5e-3: 21.0, 4.5e-3: 22.0}) == 0.0135  # best at the top: 4.5e-3 * 3
    assert sweep.next_lr({5e-4: 20.0, 1.5e-3: 20.0, 4.5e-3: 19.0}) == 0.000167  # a tie goes to the smaller lr, an edge
    assert sweep.next_lr({5e-4: 29.4, 1.5e-3: None, 4.5e-3: 16.1}) is None  # waits for every score
    assert sweep.next_lr({1.67e-4: 30.0, 5e-4: 29.4, 1.5e-3: 29.2, 4.5e-3: 16.1}) == 5.57e-05
    assert sweep.next_lr({1.67e-4: 29.0, 5e-4: 29.4, 1.5e-3: 29.2, 4.5e-3: 16.1}) is None  # enclosed now
    assert sweep.next_lr({5.57e-5: 31.0, 1.67e-4: 30.0, 5e-4: 29.4, 1.5e-3: 29.2, 4.5e-3: 16.1}) is None  # 2 beyond: stop


def test_an_edge_sweep_runs_its_extra_lrs_before_the_table_run(tmp_path, capsys):
    runner = micro_runner({0.0005: 24.0, 0.0015: 22.0, 0.0045: 20.0, 0.000167: 25.0, 5.57e-05: 23.0})
    args = ["--scale", "micro", "--cifar10", "embedded", "--tables", "main", "--datasets", "cifar10", "--only", "mae",
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results.md")]
    assert main(args[:-4] + [*(sweep_name("mae", lr) for lr in MICRO.sweep.lrs), *args[-4:]], runner=runner) == 0
    trains = [c for c in runner.calls if c[c.index("mimkit") + 1] == "train"]
    lrs = [next(a for a in c if a.startswith("train.base_lr=")) for c in trains]
    assert lrs == ["train.base_lr=0.0005", "train.base_lr=0.0015", "train.base_lr=0.0045", "train.base_lr=0.000167",
                   "train.base_lr=5.57e-05", "train.base_lr=0.000167"]  # two steps down, then the table run at the best
    assert trains[-1][trains[-1].index("--output") + 1].endswith("cifar10/mae")
    text = (tmp_path / "results.md").read_text()
    assert "| `mae` | 23.0 | 25.0 | 24.0 | 22.0 | 20.0 | 0.000167 |" in text
    # a later invocation naming only the table run finds the extra sweep runs done and trains nothing
    runner.calls.clear()
    assert main(args, runner=runner) == 0 and runner.calls == []
    assert "[cifar10/sweep/mae/lr5.57e-05] done, skipped" in capsys.readouterr().out


def test_baseline_claims_raw_pixels_and_fine_tuning_from_scratch():
    good = {**GOOD, "pixels": {"nn": 27.9}, "init": {"finetune": 56.9}}
    assert verdicts(good) == ["reproduced"] * 5  # not checked without the baseline rows
    assert len(evaluate_claims(good, baselines=True)) == 5  # nor fine-tuning from scratch without fine-tuned rows
    claims = {c.title: c for c in evaluate_claims(good, baselines=True, finetune=True)}
    pixels, scratch = claims["every non-naive preset's NN beats raw pixels"], claims["pretraining beats fine-tuning from scratch"]
    assert pixels.verdict == "reproduced" and "pixels 27.9" in pixels.detail
    assert scratch.verdict == "reproduced" and scratch.detail.endswith("capi 57.0 vs from scratch 56.9")

    def verdict(metrics, title):
        return next(c for c in evaluate_claims(metrics, baselines=True, finetune=True) if c.title.startswith(title))

    assert verdict({**good, "pixels": {"nn": 28.0}}, "every non-naive").verdict == "not reproduced"
    assert verdict({**good, "init": {"finetune": 57.0}}, "pretraining").verdict == "not reproduced"
    assert verdict(GOOD, "every non-naive").verdict.startswith("pending (missing: nn of pixels")
    assert verdict(GOOD, "pretraining").verdict.startswith("pending (missing: finetune of init")
    partial = verdict({"mae": {"nn": 29.0}, "latent_mim": {"nn": 40.0}, "pixels": {"nn": 34.9}}, "every non-naive")
    assert partial.verdict == "not reproduced" and partial.detail.startswith("mae 29.0 vs pixels 34.9")
    assert verdict({"mae": {"nn": 36.0}, "pixels": {"nn": 34.9}}, "every non-naive").verdict.startswith("pending")
    early = verdict({"mae": {"finetune": 46.6}, "init": {"finetune": 50.0}}, "pretraining")  # one row below decides it
    assert early.verdict == "not reproduced" and early.detail == "mae 46.6 vs from scratch 50.0; pending: latent_mim, pilamim, capi"
    mixed = verdict({"mae": {"finetune": 46.6}, "pilamim": {"finetune": 38.3}, "init": {"finetune": 38.5}}, "pretraining")
    assert mixed.detail == "pilamim 38.3 vs from scratch 38.5 (above it: mae 46.6); pending: latent_mim, capi"


@pytest.mark.parametrize("native, label", [(True, "Xeon (CPU, bf16 autocast)"), (False, "Xeon (CPU, fp32)")])
def test_a_cpu_run_names_the_precision_auto_gives_it(monkeypatch, native, label):
    from mimkit.reproduce import runner

    monkeypatch.setattr(runner.shutil, "which", lambda name: None)
    monkeypatch.setattr(runner, "cpu_model", lambda: "Xeon")
    monkeypatch.setattr(runner, "cpu_has_native_bf16", lambda: native)
    assert runner.detect_device() == label
    assert runner.detect_device(2) == f"2 × {label}"
