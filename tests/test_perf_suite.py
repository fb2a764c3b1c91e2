"""scripts/perf_suite.py: the plan's integrity, resumable runs, and a report computed from records."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from .runs import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "perf_suite.py"
TINY_BENCH = ("--preset", "latent_mim+tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--batch", "4", "--split-steps", "1")


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    return load_script("perf_suite")


def test_plan_names_are_unique_and_baselines_exist(suite: ModuleType) -> None:
    plan = suite.build_plan("/data/imagenette", 8)
    names = [r.name for r in plan.runs]
    assert len(names) == len(set(names))
    assert {r.group for r in plan.runs} == set(suite.GROUPS)
    for run in plan.runs:
        assert run.baseline is None or run.baseline in names, run.name
        assert (SCRIPT.parent / run.script).exists()
    # every reference row is measured at its batch, compiled
    for preset, batches in suite.REFERENCE.items():
        for b in batches:
            assert plan.by_name()[f"{preset}/b{b}"].args == ("--preset", preset, "--batch", str(b), "--compile", "model")
    # each ablation changes its baseline by switches only
    for run in (r for r in plan.runs if r.group == "ablation"):
        assert run.predicted and run.args[:4] == ("--preset", "latent_mim", "--batch", "256")
    assert not [r for r in suite.build_plan(None, 8).runs if r.group == "data"]


def test_execute_records_the_benchmark_lines_and_failures(suite: ModuleType) -> None:
    ok = suite.execute(suite.Run("t/ok", "table", "bench.py", TINY_BENCH), timeout_s=300)
    assert ok["rc"] == 0 and ok["records"][0]["batch"] == 4 and ok["records"][0]["images_per_s"] > 0
    bad = suite.execute(suite.Run("t/bad", "table", "bench.py", ("--preset", "no_such_preset", "--device", "cpu")), timeout_s=300)
    assert bad["rc"] == 2 and not bad["records"] and "no_such_preset" in bad["stderr_tail"]


def test_finished_runs_are_skipped(suite: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "perf.jsonl"
    command = suite._cmd(suite.build_plan(None, 8).by_name()["masking/mae"])  # measured with the command it has now
    done = {"name": "masking/mae", "group": "masking", "command": command, "wall_s": 1.0, "rc": 0,
            "records": [{"variant": "device", "ms": 1.0}]}
    results.write_text(json.dumps(done) + "\n" + '{"name": "torn')
    assert suite.main(["run", "--results", str(results), "--groups", "masking", "--only", "masking/mae"]) == 0
    assert "masking/mae" not in capsys.readouterr().out  # nothing ran
    assert suite.read_results(results) == {"masking/mae": done}
    assert suite.main(["run", "--results", str(results), "--groups", "nope"]) == 2


def test_report_ratios_come_from_the_records(suite: ModuleType, tmp_path: Path) -> None:
    entry = suite.execute(suite.Run("t", "table", "bench.py", TINY_BENCH), timeout_s=300)
    rec = entry["records"][0]
    results = {name: {**entry, "name": name} for name in ("latent_mim/b256", "latent_mim/b256/eager", "ablation/math attention")}
    results["ablation/AdamW for-loop"] = {**entry, "name": "ablation/AdamW for-loop", "rc": 1, "records": []}
    text = suite.render(results, suite.build_plan(None, 8))
    ratio = rec["images_per_s"] / suite.REFERENCE["latent_mim"][256]
    row = next(line for line in text.splitlines() if line.startswith("| latent_mim | 256 | none"))
    assert f"| {ratio:.2f}x |" in row
    assert "| math attention | latent_mim/b256/eager |" in text and "+0.0 %" in text
    assert "| AdamW for-loop | latent_mim/b256/eager | failed (exit 1) |" in text
    assert "| pilamim | 128 | model | not run |" in text


def test_cpu_section_rows_switches_and_operators_come_from_the_records(suite: ModuleType) -> None:
    plan = suite.build_plan(None, 8, cpu_data="/data/cifar10")
    cpu = {r.name: r for r in plan.runs if r.group == "cpu"}
    assert cpu["cpu/latent_mim/fp32/data"].baseline == "cpu/latent_mim/fp32" and "--data" in cpu["cpu/latent_mim/fp32/data"].args
    assert cpu["cpu/default/bf16/data-decode-every-read"].baseline == "cpu/default/bf16"  # the default's own pipeline
    for name, run in cpu.items():  # a switch differs from its baseline in that switch alone
        if run.baseline:
            base = cpu[run.baseline].args
            changed = {a for a in run.args if a not in base} | {a for a in base if a not in run.args}
            assert changed <= {"model", "blocks", "none", "--data", "/data/cifar10", "--ops", "15", "--attn", "fused", "manual", "--host-alloc", "glibc", "--adamw", "loop",
                               "embedded", "data.cache=false", "data.num_workers=2"}, name
    entry = suite.execute(suite.Run("t", "cpu", "bench.py", (*TINY_BENCH, "--ops", "3")), timeout_s=300)
    rec = entry["records"][0]
    assert rec["cpu_native_bf16"] in (True, False) and len(rec["top_ops"]) == 3
    fast = {**entry, "records": [{**rec, "images_per_s": rec["images_per_s"] * 1.5}]}
    results = {"cpu/latent_mim/fp32": entry, "cpu/latent_mim/fp32/compile-model": fast}
    text = "\n".join(suite.render_cpu(results, plan))
    assert f"| latent_mim | 4 | fp32 | none | {rec['images_per_s']:.1f} | {rec['gflop_per_image']:.3f} |" in text
    assert "| 155 |" in text and "| mae | 128 | bf16 | none | not run | | | | 313 |" in text
    assert f"`{entry['command']}`" in text  # a measured row shows the command that measured it
    assert f"| cpu/latent_mim/fp32/compile-model | {rec['images_per_s'] * 1.5:.1f} | {rec['images_per_s']:.1f} | +50.0 % |" in text
    assert f"| `{rec['top_ops'][0]['op']}` |" in text
    longer = {**fast, "records": [{**fast["records"][0], "steps": rec["steps"] + 19}]}  # another protocol than its baseline
    text = "\n".join(suite.render_cpu({**results, "cpu/latent_mim/fp32/compile-model": longer}, plan))
    assert f"baseline timed with {rec['steps']} steps, this with {rec['steps'] + 19} |" in text and "+50.0 %" not in text


def test_a_run_whose_command_changed_is_measured_again(suite: ModuleType) -> None:
    plan = suite.build_plan(None, 8)
    run = plan.by_name()["cpu/mae/fp32"]
    old = {"name": run.name, "command": suite._cmd(run).replace("--steps 20", "--steps 4"), "rc": 0, "records": [{}]}
    assert suite.current({run.name: old}, plan) == {}
    now = {**old, "command": suite._cmd(run)}
    assert suite.current({run.name: now, "gone/run": {**now, "name": "gone/run"}}, plan) == {run.name: now}


def test_baseline_runs_alternate_and_differ_from_the_checkout_in_their_code_alone(suite: ModuleType) -> None:
    runs = [r for r in suite.build_plan(None, 8).runs if r.group == "cpu-baseline"]
    assert len(runs) == 2 * len(suite.BASELINE_CASES) * suite.BASELINE_ROUNDS
    for old, new in zip(runs[::2], runs[1::2]):  # revision first, then this checkout, case by case
        assert old.revision == suite.BASELINE_REVISION and new.revision is None
        assert old.name.replace(f"/{suite.BASELINE_REVISION}/", "/current/") == new.name
        preset = new.args[1]
        assert old.args == ("--preset", f"configs/{preset}.yaml", *new.args[2:])
        assert "--batch" in new.args and new.args[new.args.index("--batch") + 1] == "128"


def test_baseline_report_compares_the_best_of_each_side_and_carries_the_reference_over(suite: ModuleType) -> None:
    plan = suite.build_plan(None, 8)
    rev = suite.BASELINE_REVISION
    rec = {"images_per_s": 0.0, "device_name": "cpu", "cpu_threads": 2, "torch": "x"}

    def entry(ips: float) -> dict:
        return {"rc": 0, "records": [{**rec, "images_per_s": ips}], "command": "c"}

    results = {f"cpu-baseline/latent_mim/bf16/{rev}/1": entry(90.0), f"cpu-baseline/latent_mim/bf16/{rev}/2": entry(100.0),
               "cpu-baseline/latent_mim/bf16/current/1": entry(180.0), "cpu-baseline/latent_mim/bf16/current/2": entry(150.0),
               f"cpu-baseline/mae/bf16/{rev}/1": entry(50.0)}  # one side half measured: no ratio
    text = "\n".join(suite.render_baseline(results, plan))
    ref, ref_base = suite.BASELINE_CASES["latent_mim/bf16"][3:]
    assert f"| latent_mim/bf16 | 100.0 | 180.0 | 1.80x | {ref} | {ref_base} | {1.8 * ref_base / ref:.2f}x |" in text
    assert "| mae/bf16 | not run | not run |" in text
    whole = suite.render(results, plan)  # CPU records alone name no device for the GPU sections
    assert "The GPU sections are to be measured" in whole


def test_baseline_checkout_imports_the_revision_own_code(suite: ModuleType, tmp_path: Path) -> None:
    import subprocess
    import sys

    where = suite.checkout("HEAD", tmp_path / "rev")
    assert (where / "mimkit" / "objectives").is_symlink()
    code = "import mimkit, mimkit.objectives; print(mimkit.__file__); print(mimkit.objectives.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(where), "PATH": ""},
                         capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(f).resolve().is_relative_to(where.resolve()) for f in out), out
