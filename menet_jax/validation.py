"""Validation of a run's config: every user-settable value checked before any work starts.

Errors are `ConfigError` (a ValueError) with one sentence naming the key, the value and what is
allowed; `main` prints it on one line and exits non-zero.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np


class ConfigError(ValueError):
    """A config value is not allowed."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive_int(config, key: str, *, allow_minus_one: bool = False, prefix: str = "") -> None:
    value = config[key]
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (value > 0 or (allow_minus_one and value == -1))
    extra = " or -1" if allow_minus_one else ""
    _require(ok, f"config.{prefix}{key}={value!r} must be a positive integer{extra}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on the first value that is not allowed."""
    from menet_jax import input_pipeline, models
    from menet_jax.me import CHANNEL_MODES, METHODS

    datasets = sorted(input_pipeline.DATASETS)
    _require(
        config.dataset in input_pipeline.DATASETS,
        f"config.dataset={config.dataset!r} is unknown; allowed: {', '.join(datasets)}",
    )
    _require(
        config.model in models.MODELS,
        f"config.model={config.model!r} is unknown; allowed: {', '.join(sorted(models.MODELS))}",
    )
    for key in ("batch_size", "eval_batch_size", "checkpoint_every_steps", "log_every_steps"):
        _positive_int(config, key)
    _positive_int(config, "keep_checkpoints")
    _positive_int(config, "num_train_steps", allow_minus_one=True)
    _positive_int(config, "num_eval_examples", allow_minus_one=True)
    _positive_int(config, "num_train_examples", allow_minus_one=True)
    _require(config.num_epochs > 0, f"config.num_epochs={config.num_epochs!r} must be positive")
    _require(
        config.learning_rate > 0,
        f"config.learning_rate={config.learning_rate!r} must be positive",
    )
    bounds = tuple(config.lr_boundaries_epochs)
    _require(
        all(b > 0 for b in bounds) and list(bounds) == sorted(bounds),
        f"config.lr_boundaries_epochs={bounds!r} must be positive and increasing",
    )
    _require(
        0 < config.lr_decay_factor <= 1,
        f"config.lr_decay_factor={config.lr_decay_factor!r} must be in (0, 1]",
    )
    _require(0 <= config.momentum < 1, f"config.momentum={config.momentum!r} must be in [0, 1)")
    _require(
        config.weight_decay >= 0,
        f"config.weight_decay={config.weight_decay!r} must be non-negative",
    )
    _require(isinstance(config.seed, int), f"config.seed={config.seed!r} must be an integer")
    _validate_me(config.me, METHODS, CHANNEL_MODES)
    _validate_adv(config.adv)
    parse_attacks(config.eval.attacks)
    validate_eval(config.eval)


def _validate_me(me, methods, channel_modes) -> None:
    _require(
        me.method in methods,
        f"config.me.method={me.method!r} is unknown; allowed: {', '.join(methods)}",
    )
    _require(
        me.channels in channel_modes,
        f"config.me.channels={me.channels!r} is unknown; allowed: {', '.join(channel_modes)}",
    )
    _require(
        me.mode in ("offline", "online"),
        f"config.me.mode={me.mode!r} is unknown; allowed: offline, online",
    )
    for key in ("p_start", "p_end"):
        _require(0 < me[key] <= 1, f"config.me.{key}={me[key]!r} must be in (0, 1]")
    _require(
        me.p_start <= me.p_end,
        f"config.me.p_start={me.p_start!r} must not exceed config.me.p_end={me.p_end!r}",
    )
    _require(
        me.inference_p == -1 or 0 < me.inference_p <= 1,
        f"config.me.inference_p={me.inference_p!r} must be in (0, 1] or -1 (mean training p)",
    )
    for key in ("num_masks", "max_iters", "build_batch_size"):
        _positive_int(me, key, prefix="me.")
    _require(
        isinstance(me.votes, int) and me.votes >= 0,
        f"config.me.votes={me.votes!r} must be a non-negative integer",
    )
    _require(
        0 < me.rank_fraction <= 1,
        f"config.me.rank_fraction={me.rank_fraction!r} must be in (0, 1]",
    )
    _require(
        me.threshold in ("", "chatterjee"),
        f"config.me.threshold={me.threshold!r} is unknown; allowed: '' (coded rule), chatterjee",
    )
    _require(me.tol > 0, f"config.me.tol={me.tol!r} must be positive")
    _require(me.mu > 0, f"config.me.mu={me.mu!r} must be positive")
    _require(
        me.shrinkage == -1 or me.shrinkage > 0,
        f"config.me.shrinkage={me.shrinkage!r} must be positive or -1 (sigma_max / 50)",
    )


def _validate_adv(adv) -> None:
    if not adv.enabled:
        return
    _require(adv.eps > 0, f"config.adv.eps={adv.eps!r} must be positive")
    _require(adv.step_size > 0, f"config.adv.step_size={adv.step_size!r} must be positive")
    _require(
        isinstance(adv.steps, int) and adv.steps > 0,
        f"config.adv.steps={adv.steps!r} must be a positive integer",
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:variant]` the way `--config=` does (for benchmarks, notebooks)."""
    import importlib.util
    import os

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("menet_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


# Evaluation settings (the attack suite's row groups and budgets).

GROUPS = (
    "clean",
    "fgsm",
    "pgd",
    "cw",
    "eot",
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
        raise ValueError(
            f"config.eval.attacks={spec!r} names unknown groups {unknown}; allowed: 'all' or a "
            f"comma-separated subset of {', '.join(GROUPS)}"
        )
    return set(names) | {"clean"}


def _err(key: str, value, allowed: str) -> ValueError:
    return ValueError(f"config.eval.{key}={value!r} is not allowed; it must be {allowed}")


def validate_eval(ev: ml_collections.ConfigDict) -> None:
    """Raises ValueError on the first eval setting that is not allowed."""

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
        "votes",
        "long_pgd_steps",
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
    for key in ("spsa_learning_rate", "spsa_delta"):
        if not ev[key] > 0:
            raise _err(key, ev[key], "positive")
