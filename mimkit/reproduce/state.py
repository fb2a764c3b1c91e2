"""What a run directory holds: trained, evaluated, resumable, stale; timings."""

from __future__ import annotations

import json
import os
import socket
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import step_dirs
from ..resume import changed_keys, config_diff

# per kind: the file that says the run has finished its work, and the config it saves
FINISHED = {"finetune": "finetune.json"}
SAVED_CONFIG = {"finetune": "finetune.yaml"}

@dataclass(frozen=True)
class RunState:
    trained: bool = False  # summary.json (a finetune run: finetune.json)
    evaluated: bool = False  # metrics.json
    checkpoint: bool = False  # a complete checkpoints/step_* to resume from
    stale: tuple[str, ...] = ()  # config keys in which the directory's run differs from the plan
    kind: str = "train"  # RunSpec.kind: a sweep or finetune run is done once trained, a baseline once evaluated

    @property
    def done(self) -> bool:
        finished = {"sweep": self.trained, "finetune": self.trained, "baseline": self.evaluated}.get(
            self.kind, self.trained and self.evaluated)
        return finished and not self.stale


def inspect_run(run_dir: Path, planned: Mapping[str, Any] | None = None, kind: str = "train", ignore: Sequence[str] = ()) -> RunState:
    stale: tuple[str, ...] = ()
    saved = run_dir / SAVED_CONFIG.get(kind, "config.yaml")
    if planned is not None and saved.is_file():
        diff = changed_keys if kind == "finetune" else config_diff
        stale = tuple(diff(yaml.safe_load(saved.read_text()) or {}, planned, ignore))
    return RunState(
        trained=(run_dir / FINISHED.get(kind, "summary.json")).is_file(),
        evaluated=(run_dir / "metrics.json").is_file(),
        checkpoint=bool(step_dirs(run_dir)),
        stale=stale,
        kind=kind,
    )


LOCK = "running.lock"  # "<pid> <host>" of the process running a run's phases; git-ignored


def lock_holder(run_dir: Path) -> str | None:
    """Who runs ``run_dir`` now ("pid N on HOST"), or None: no lock, or one left by a process of
    this host that has exited. A lock from another host cannot be checked, so it counts as held."""
    try:
        pid_text, host = (run_dir / LOCK).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
    return f"pid {pid} on {host}"


def take_lock(run_dir: Path) -> str | None:
    """Lock ``run_dir`` for this process: None once held, else who holds it. A dead holder's lock is
    taken over. The lock appears whole (linked from a file already written) or not at all."""
    path, mine = run_dir / LOCK, run_dir / f"{LOCK}.{os.getpid()}"
    mine.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    try:
        for _ in range(2):
            try:
                os.link(mine, path)
                return None
            except FileExistsError:
                holder = lock_holder(run_dir)
                if holder is not None:
                    return holder
                path.unlink(missing_ok=True)
        return lock_holder(run_dir) or "another process"
    finally:
        mine.unlink()


def release_lock(run_dir: Path) -> None:
    path = run_dir / LOCK
    try:
        if int(path.read_text().split()[0]) == os.getpid():
            path.unlink()
    except (OSError, ValueError, IndexError):
        pass


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def load_timing(run_dir: Path) -> dict[str, Any]:
    data = read_json(run_dir / "timing.json")
    return data if isinstance(data, dict) and isinstance(data.get("attempts"), list) else {"attempts": []}


def phase_seconds(timing: Mapping[str, Any], phase: str) -> float:
    return sum(a.get("seconds") or 0.0 for a in timing["attempts"] if a.get("phase") == phase)


def median_images_per_s(run_dir: Path) -> float | None:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return None
    rates = []
    for line in path.read_text().splitlines():
        try:
            rate = json.loads(line).get("images_per_s")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(rate, (int, float)):
            rates.append(float(rate))
    return statistics.median(rates) if rates else None


