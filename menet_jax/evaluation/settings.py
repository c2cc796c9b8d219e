"""The evaluation's row groups and the checks of the `eval` config keys.

`GROUPS` names the groups of attack rows `config.eval.attacks` can select (`parse_attacks`);
`ME_ONLY` those that need a model with ME. `validate_eval` checks every `eval` value before any
work starts (training calls it too, so a bad evaluation setting fails before hours of training).
Errors are `menet_jax.config.ConfigError`.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from menet_jax.config import ConfigError

GROUPS = (
    "clean",
    "fgsm",
    "pgd",
    "cw",
    "eot",
    "apgd",
    "network_only",
    "graybox",
    "transfer",
    "spsa",
    "boundary",
    "vote",
    "sanity",
)
ME_ONLY = ("eot", "network_only", "graybox", "vote")


def parse_attacks(spec: str) -> set[str]:
    """The row groups named by eval.attacks ('all' or a comma-separated subset)."""
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if names == ["all"]:
        return set(GROUPS)
    unknown = [s for s in names if s not in GROUPS]
    if unknown or not names:
        raise ConfigError(
            f"config.eval.attacks={spec!r} names unknown groups {unknown}; allowed: 'all' or a "
            f"comma-separated subset of {', '.join(GROUPS)}"
        )
    return set(names) | {"clean"}


def _err(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"config.eval.{key}={value!r} is not allowed; it must be {allowed}")


def validate_eval(ev: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on the first eval setting that is not allowed."""
    parse_attacks(ev.attacks)

    def is_int(v):
        return isinstance(v, int | np.integer) and not isinstance(v, bool)

    if not (is_int(ev.num_examples) and (ev.num_examples > 0 or ev.num_examples == -1)):
        raise _err("num_examples", ev.num_examples, "a positive integer or -1 (all)")
    for key in (
        "long_pgd_examples",
        "eot_examples",
        "spsa_examples",
        "boundary_examples",
        "sweep_examples",
        "cw_examples",
        "vote_examples",
        "apgd_examples",
    ):
        v = ev[key]
        if not (is_int(v) and v >= -1):
            raise _err(key, v, "a non-negative integer (0 skips the row) or -1 (all)")
    for key in (
        "restarts",
        "eot_samples",
        "eot_steps",
        "spsa_steps",
        "boundary_steps",
        "eval_keys",
        "long_pgd_steps",
        "apgd_steps",
        "apgd_eot_samples",
        "boundary_proposals",
        "cw_l2_steps",
    ):
        if not (is_int(ev[key]) and ev[key] >= 1):
            raise _err(key, ev[key], "a positive integer")
    if not (ev.eps >= 0 and math.isfinite(ev.eps)):
        raise _err("eps", ev.eps, "a finite number >= 0")
    if not ev.step_size > 0:
        raise _err("step_size", ev.step_size, "positive")
    if not (ev.eot_step_size == -1 or ev.eot_step_size > 0):
        raise _err("eot_step_size", ev.eot_step_size, "positive or -1 (5 * eps / eot_steps)")
    steps = tuple(ev.pgd_steps)
    if not steps or not all(is_int(s) and s >= 1 for s in steps):
        raise _err("pgd_steps", steps, "a non-empty tuple of positive integers")
    if not all(k >= 0 for k in ev.cw_kappas):
        raise _err("cw_kappas", tuple(ev.cw_kappas), "a tuple of numbers >= 0")
    mults = tuple(ev.eps_multipliers)
    if not all(m >= 0 for m in mults) or list(mults) != sorted(set(mults)):
        raise _err("eps_multipliers", mults, "strictly increasing numbers >= 0")
    if not (is_int(ev.spsa_samples) and ev.spsa_samples >= 2 and ev.spsa_samples % 2 == 0):
        raise _err("spsa_samples", ev.spsa_samples, "an even integer >= 2")
    if ev.gradient not in ("bpda", "exact"):
        raise _err("gradient", ev.gradient, "'bpda' (straight-through) or 'exact'")
    losses = tuple(ev.apgd_losses)
    if not losses or not set(losses) <= {"ce", "dlr", "dlr_targeted"}:
        raise _err("apgd_losses", losses, "a non-empty tuple of 'ce', 'dlr', 'dlr_targeted'")
    if not ev.cw_l2_confidence >= 0:
        raise _err("cw_l2_confidence", ev.cw_l2_confidence, "a number >= 0")
    for key in ("spsa_learning_rate", "spsa_delta"):
        if not ev[key] > 0:
            raise _err(key, ev[key], "positive")
