"""Validation of a run's config: every user-settable value checked before any work starts.

Errors are `ConfigError` (a ValueError) with one sentence naming the key, the value and what is
allowed; `main` prints it on one line and exits non-zero.
"""

from __future__ import annotations

import ml_collections


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
