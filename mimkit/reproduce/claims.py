"""The papers' claims as rules over the measured numbers, each with a verdict."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any



COLLAPSE_SIM = 0.90  # naive pooled-feature similarity at or above this ...
NEAR_CHANCE = 5.0  # ... and its NN at most chance + this many points: collapsed
CLEARLY = 2.0  # "clearly higher": by at least this many points
COMPETITIVE = 1.0  # "competitive": within this many points of the best


@dataclass(frozen=True)
class Claim:
    title: str
    rule: str
    verdict: str  # "reproduced" | "not reproduced" | "pending (...)"
    detail: str = ""


def _value(metrics: Mapping[str, Mapping[str, Any] | None], run: str, key: str) -> float | None:
    m = metrics.get(run)
    v = m.get(key) if m else None
    return float(v) if isinstance(v, (int, float)) else None


def _claim(title: str, rule: str, metrics: Mapping[str, Mapping[str, Any] | None], needs: Sequence[tuple[str, str]],
           test: Callable[[dict[tuple[str, str], float]], tuple[bool, str]]) -> Claim:
    values = {(run, key): _value(metrics, run, key) for run, key in needs}
    missing = [f"{key} of {run}" for (run, key), v in values.items() if v is None]
    if missing:
        return Claim(title, rule, f"pending (missing: {', '.join(missing)})")
    ok, detail = test(values)  # type: ignore[arg-type]
    return Claim(title, rule, "reproduced" if ok else "not reproduced", detail)


NON_NAIVE = ("mae", "latent_mim", "pilamim", "capi")


def _all_above(title: str, rule: str, metrics: Mapping[str, Mapping[str, Any] | None], key: str, floor: str,
               floor_name: str) -> Claim:
    """Every non-naive preset's ``key`` above the ``floor`` row's. One preset at or below it decides
    the claim before the other rows are in."""
    floor_v, known = _value(metrics, floor, key), {p: _value(metrics, p, key) for p in NON_NAIVE}

    def above(v: dict) -> tuple[bool, str]:
        f = v[floor, key]
        return all(v[p, key] > f for p in NON_NAIVE), ", ".join(f"{p} {v[p, key]:.1f}" for p in NON_NAIVE) + f" vs {floor_name} {f:.1f}"

    claim = _claim(title, rule, metrics, [(floor, key), *((p, key) for p in NON_NAIVE)], above)
    below = [p for p, v in known.items() if v is not None and floor_v is not None and v <= floor_v]
    if below and claim.verdict.startswith("pending"):
        beat = [p for p, v in known.items() if v is not None and p not in below]
        pending = [p for p, v in known.items() if v is None]
        detail = ", ".join(f"{p} {known[p]:.1f}" for p in below) + f" vs {floor_name} {floor_v:.1f}"
        detail += f" (above it: {', '.join(f'{p} {known[p]:.1f}' for p in beat)})" if beat else ""
        detail += f"; pending: {', '.join(pending)}"
        claim = Claim(title, rule, "not reproduced", detail)
    return claim


def evaluate_claims(metrics: Mapping[str, Mapping[str, Any] | None], num_classes: int = 10, baselines: bool = False,
                    finetune: bool = False) -> list[Claim]:
    """The claims, each decided by a fixed rule on the main table's metrics (keyed by row name;
    NN / linear / finetune in percent, Sim a cosine). ``baselines``: the table has the raw-pixel and
    init rows (NN above raw pixels); ``finetune``: its rows are fine-tuned (latent_mim close to mae;
    with the baselines, every preset above the init row fine-tuned from scratch)."""
    chance = 100.0 / num_classes

    def collapse(v: dict) -> tuple[bool, str]:
        sim, nn = v["naive_latent_mim", "sim"], v["naive_latent_mim", "nn"]
        return sim >= COLLAPSE_SIM and nn <= chance + NEAR_CHANCE, f"naive Sim {sim:.3f}, NN {nn:.1f} (chance {chance:.1f})"

    def nn_gap(v: dict) -> tuple[bool, str]:
        lm, mae = v["latent_mim", "nn"], v["mae", "nn"]
        return lm >= mae + CLEARLY, f"NN latent_mim {lm:.1f} vs mae {mae:.1f} ({lm - mae:+.1f})"

    def linear_at_least(v: dict) -> tuple[bool, str]:
        lm, mae = v["latent_mim", "linear"], v["mae", "linear"]
        return lm >= mae, f"linear latent_mim {lm:.1f} vs mae {mae:.1f} ({lm - mae:+.1f})"

    def pilamim(v: dict) -> tuple[bool, str]:
        p, best = v["pilamim", "linear"], max(v["mae", "linear"], v["latent_mim", "linear"])
        return p >= best - COMPETITIVE, f"linear pilamim {p:.1f} vs best of mae / latent_mim {best:.1f} ({p - best:+.1f})"

    def finetune_close(v: dict) -> tuple[bool, str]:
        lm, mae = v["latent_mim", "finetune"], v["mae", "finetune"]
        return lm >= mae - COMPETITIVE, f"fine-tune latent_mim {lm:.1f} vs mae {mae:.1f} ({lm - mae:+.1f})"

    pixels = [_all_above("every non-naive preset's NN beats raw pixels", f"NN(p) > NN(raw pixels) for {', '.join(NON_NAIVE)}",
                         metrics, "nn", "pixels", "pixels")] if baselines else []
    tuned = [_claim("latent_mim fine-tunes about as well as mae (83.0 vs 83.6 in the paper)",
                    f"fine-tune(latent_mim) ≥ fine-tune(mae) − {COMPETITIVE:g}",
                    metrics, [("latent_mim", "finetune"), ("mae", "finetune")], finetune_close)] if finetune else []
    scratch = [_all_above("pretraining beats fine-tuning from scratch",
                          f"fine-tune(p) > fine-tune(encoder at initialisation) for {', '.join(NON_NAIVE)}",
                          metrics, "finetune", "init", "from scratch")] if baselines and finetune else []
    return [
        _claim("the naive baseline collapses",
               f"naive Sim ≥ {COLLAPSE_SIM:.2f} and naive NN ≤ chance + {NEAR_CHANCE:g} points",
               metrics, [("naive_latent_mim", "sim"), ("naive_latent_mim", "nn")], collapse),
        _claim("latent_mim has a clearly higher NN than mae", f"NN(latent_mim) ≥ NN(mae) + {CLEARLY:g}",
               metrics, [("latent_mim", "nn"), ("mae", "nn")], nn_gap),
        _claim("latent_mim's linear probe is at least mae's", "linear(latent_mim) ≥ linear(mae)",
               metrics, [("latent_mim", "linear"), ("mae", "linear")], linear_at_least),
        _claim("pilamim is competitive or better on the linear probe",
               f"linear(pilamim) ≥ max(linear(mae), linear(latent_mim)) − {COMPETITIVE:g}",
               metrics, [("pilamim", "linear"), ("mae", "linear"), ("latent_mim", "linear")], pilamim),
        *pixels, *tuned, *scratch,
    ]
