"""The config a resumed run trains with: its own ``OUTPUT/config.yaml``, changed only where that
cannot change the experiment.

``--resume`` reads the saved config, so a run resumes without repeating its ``--preset`` and
overrides. Overrides given with it are compared with the saved values:

- operational keys (``OPERATIONAL_KEYS``: data workers, logging, checkpoint cadence, trackers,
  where the data and the outputs live, compilation, the attention kernel) may change;
- the run's length (``LENGTH_KEYS``) may change only with ``--extend``; the lr and momentum
  schedules are then recomputed over the new length and jump at the resume step;
- any other difference is refused, naming each key with its saved and new value.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import ConfigError, RunConfig, apply_overrides, config_from_yaml, flatten, load_config

log = logging.getLogger(__name__)

# keys that may differ between two sessions of one run without changing the experiment
OPERATIONAL_KEYS = frozenset({
    "preset", "data.source", "data.num_workers", "data.cache", "train.output_dir", "train.trackers", "train.log_every",
    "train.save_every", "train.keep_last", "train.compile", "train.attention",
})
LENGTH_KEYS = ("train.epochs", "train.max_steps")  # changeable on resume with --extend


def changed_keys(saved: Mapping[str, Any], planned: Mapping[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys in which two config trees differ, operational keys and ``ignore`` aside."""
    a, b = flatten(dict(saved)), flatten(dict(planned))
    skip = OPERATIONAL_KEYS | set(ignore)
    return sorted(k for k in a.keys() | b.keys() if k not in skip and a.get(k) != b.get(k))


def describe_changes(saved: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``key (saved -> new)`` for each dotted key, for a refusal message."""
    old, cur = flatten(dict(saved)), flatten(dict(new))
    return ", ".join(f"{k} ({old.get(k)!r} -> {cur.get(k)!r})" for k in keys)


def config_diff(saved: Mapping[str, Any], planned: Mapping[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """``changed_keys`` of two training configs. A key the saved config lacks (written before the
    key existed) counts at its schema default; the settings of a head that neither config builds
    (weight 0 in both) change nothing."""
    a = {**flatten(RunConfig().to_dict()), **flatten(saved)}
    b = flatten(planned)
    idle = tuple(f"objectives.{h}." for h in RunConfig().objectives.heads() if not a.get(f"objectives.{h}.weight") and not b.get(f"objectives.{h}.weight"))
    return [k for k in changed_keys(a, b, ignore) if not k.startswith(idle)]


def run_dir_of(resume: str, output: str | None) -> Path | None:
    """The run directory a ``--resume`` refers to: ``--output``; else, for a checkpoint path
    ``RUN/checkpoints/step_*``, that RUN; else None (the preset's default output directory)."""
    if output:
        return Path(output)
    path = Path(resume)
    return path.parent.parent if resume != "latest" and path.parent.name == "checkpoints" else None


def resumed_config(run_dir: Path, preset: str | None, overrides: Sequence[str], extend: bool = False) -> RunConfig | None:
    """The config to resume ``run_dir`` with, or None when it holds no ``config.yaml`` (a run killed
    before its first step: the preset and overrides decide). ``preset`` None: the saved config
    plus ``overrides``; a preset given again must rebuild the saved config."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return None
    try:
        saved = config_from_yaml(saved_file)
    except ConfigError as e:
        raise ConfigError(f"--resume: {saved_file}: {e}") from e
    cfg = load_config(preset, list(overrides)) if preset else apply_overrides(saved, overrides)
    saved_tree, new_tree = saved.to_dict(), cfg.to_dict()
    changed = config_diff(saved_tree, new_tree)
    refused = [k for k in changed if not (extend and k in LENGTH_KEYS)]
    if refused:
        shown = describe_changes(saved_tree, new_tree, refused)
        hint = ("; pass --extend to change the run's length" if set(refused) <= set(LENGTH_KEYS)
                else "; start a new run (another --output) to change them")
        raise ConfigError(f"--resume: the run in {run_dir} was trained with other values of {shown}{hint}")
    old, new = flatten(saved_tree), flatten(new_tree)
    for k in changed:  # only LENGTH_KEYS, under --extend
        log.warning("--extend: %s %r -> %r; the lr and momentum schedules are recomputed over the new length",
                    k, old.get(k), new.get(k))
    cfg.train.output_dir = str(run_dir)
    return cfg
