"""The `mimkit` command: subcommands dispatch to their modules, `python -m mimkit` and the
checkout's shims reach the same code, and a wrong command is one line."""

import subprocess
import sys

from mimkit.cli import COMMANDS, main

from .runs import ENV, ROOT


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert main([]) == 2  # no command: the usage, and a failing exit code


def test_an_unknown_command_is_one_line(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'trian'" in err and "train" in err


def test_each_command_has_its_own_help(capsys):
    for name in COMMANDS:
        try:
            main([name, "--help"])
        except SystemExit as e:  # argparse exits 0 after printing the help
            assert e.code == 0, name
        assert capsys.readouterr().out.startswith(f"usage: mimkit {name}"), name


def test_python_dash_m_and_the_shims_reach_the_same_command():
    for argv in ([sys.executable, "-m", "mimkit", "train", "--help"], [sys.executable, "train.py", "--help"],
                 [sys.executable, "scripts/reproduce.py", "--help"]):
        proc = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (argv, proc.stderr[-500:])
        assert proc.stdout.startswith("usage: mimkit "), argv


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`mimkit reproduce --dry-run | head -1`: stdout closes before the command writes."""
    argv = [sys.executable, "-m", "mimkit", "reproduce", "--dry-run", "--cifar10", "embedded", "--imagenette", "embedded",
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r.md")]
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # long before the interpreter has imported torch and planned the runs
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err and "Exception ignored" not in err, err[-500:]
