"""The config schema of training and matrix estimation: every key's default beside its check.

`configs/base.py` starts from `default_config()` and each dataset file overrides it; users override
any key on the command line (`--config.me.method=softimpute`). `validate(config)` checks every
training, `me` and `adv` value before any work starts (the `eval` section is checked by
`menet_jax.evaluation.settings`). A key without a value is `None`, never a magic number; a choice
between rules is a mode string. Every error is a `ConfigError` (a ValueError) of one sentence naming
the key, the value and what is allowed; `main` prints it on one line and exits non-zero.

A run's config is stored in WORKDIR/config.json as `{"schema_version": N, "config": {...}}`
(`to_json` / `from_json`); a config.json of an older schema is upgraded on reading (`upgrade_v1`:
written before schema versions existed; `upgrade_v2`: flat evaluation keys; `upgrade_v3`: before
`model_width`, `model_mean` / `model_std` and `adv.attack_bn`). A key whose default keeps an older
file's meaning (`me.sprime_dir`, where S' is cached) is filled in without a new version.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import traceback
from collections.abc import Callable
from typing import Any

import ml_collections
from ml_collections import config_dict

SCHEMA_VERSION = 4


class ConfigError(ValueError):
    """A config value is not allowed."""


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its default, what values it allows, and what it means.

    Attributes:
      default: the default value; None means "not set" (see `doc` for what that selects).
      allowed: the allowed values in words, for the error message (or a function giving them).
      ok: True for an allowed value.
      doc: what the key means.
      kind: the value type of a key whose default is None (so the command line can set it).
    """

    default: Any
    allowed: str | Callable[[], str]
    ok: Callable[[Any], bool]
    doc: str
    kind: type | None = None


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v) -> bool:
    return is_int(v) and v > 0


def positive(v) -> bool:
    return is_num(v) and v > 0


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _in_unit(v) -> bool:  # (0, 1]
    return is_num(v) and 0 < v <= 1


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _registry(module: str, name: str) -> tuple[str, ...]:
    """Names registered in menet_jax.<module>.<name> (imported lazily: the schema loads fast)."""
    return tuple(sorted(getattr(importlib.import_module(f"menet_jax.{module}"), name)))


def _registered(module: str, name: str) -> tuple[Callable[[], str], Callable[[Any], bool]]:
    """(allowed, ok) of a key whose value names an entry of a registry."""
    return (
        lambda: "one of " + ", ".join(_registry(module, name)),
        lambda v: v in _registry(module, name),
    )


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _numbers(v, check: Callable[[Any], bool]) -> bool:
    return isinstance(v, tuple | list) and bool(v) and all(is_num(x) and check(x) for x in v)


def _increasing_positive(v) -> bool:
    v = tuple(v)
    return all(is_num(b) and b > 0 for b in v) and list(v) == sorted(v)


POSITIVE_INT = "a positive integer"
POSITIVE = "a positive number"

# The top-level training keys (supplement Table 8's common settings: docs/method.md §4).
TRAIN: dict[str, Key] = {
    "dataset": Key(
        "cifar10",
        *_registered("input_pipeline", "DATASET_NAMES"),
        "dataset name (menet_jax.input_pipeline.DATASETS, or image_folder: the folder "
        "config.data_dir names)",
    ),
    "data_dir": Key(
        None,
        "a path or None",
        optional(lambda v: isinstance(v, str) and v != ""),
        "None: the tfds default data dir; Tiny-ImageNet: the folder holding tiny-imagenet-200; "
        "image_folder: the folder holding train/<class>/ and test/<class>/",
        str,
    ),
    "model": Key(
        "resnet18",
        *_registered("models", "MODELS"),
        "network name (menet_jax.models.MODELS)",
    ),
    "model_width": Key(
        64,
        POSITIVE_INT,
        positive_int,
        "resnet18: channels of its first stage (64; the others 2x, 4x, 8x); other models: 64",
    ),
    "model_mean": Key(
        None,
        "a tuple of one number per image channel, or None",
        optional(lambda v: _numbers(v, lambda m: True)),
        "per-channel mean the network subtracts first (after ME); None: the dataset's",
        tuple,
    ),
    "model_std": Key(
        None,
        "a tuple of one positive number per image channel, or None",
        optional(lambda v: _numbers(v, lambda s: s > 0)),
        "per-channel std the network divides by after the mean; None: the dataset's. The "
        "authors' CIFAR-10 code used (0.2023, 0.1994, 0.2010) (docs/method.md §7)",
        tuple,
    ),
    "num_train_examples": Key(
        None,
        "a positive integer or None",
        optional(positive_int),
        "None: the whole train split; else its first N (tests, quick looks)",
        int,
    ),
    "num_epochs": Key(
        200.0,
        POSITIVE,
        positive,
        "epochs of S' (n*M examples) for ME-Net, of S (M) for the vanilla model",
    ),
    "batch_size": Key(256, POSITIVE_INT, positive_int, "global batch over every device"),
    "learning_rate": Key(0.1, POSITIVE, positive, "SGD rate"),
    "lr_boundaries_epochs": Key(
        (100, 150),
        "positive and increasing epochs",
        _increasing_positive,
        "epochs at which the learning rate is multiplied by lr_decay_factor",
    ),
    "lr_decay_factor": Key(0.1, "in (0, 1]", _in_unit, "learning-rate decay factor"),
    "lr_schedule": Key(
        "step",
        "step or warmup_cosine",
        _one_of("step", "warmup_cosine"),
        "step: learning_rate, decayed at lr_boundaries_epochs (the paper); warmup_cosine: a "
        "linear rise from 0 over lr_warmup_fraction of the steps, then a cosine to 0 (short "
        "runs; lr_boundaries_epochs unused)",
    ),
    "lr_warmup_fraction": Key(
        0.1,
        "in [0, 1)",
        lambda v: is_num(v) and 0 <= v < 1,
        "warmup_cosine: the fraction of the training steps spent rising to learning_rate",
    ),
    "momentum": Key(0.9, "in [0, 1)", lambda v: is_num(v) and 0 <= v < 1, "SGD momentum"),
    "weight_decay": Key(
        1e-4,
        "a number >= 0",
        lambda v: is_num(v) and v >= 0,
        "PyTorch-style L2 added to the gradient, as the authors' SGD does",
    ),
    "augment": Key(
        True,
        "True or False",
        _is_bool,
        "pad 4 + random crop + horizontal flip, applied after ME",
    ),
    "seed": Key(0, "an integer", is_int, "the root of every random stream (menet_jax.rng)"),
    "num_train_steps": Key(
        None,
        "a positive integer or None",
        optional(positive_int),
        "None: num_epochs worth of steps",
        int,
    ),
    "checkpoint_every_steps": Key(2000, POSITIVE_INT, positive_int, "checkpoint interval"),
    "keep_checkpoints": Key(3, POSITIVE_INT, positive_int, "checkpoints kept (latest N)"),
    "log_every_steps": Key(100, POSITIVE_INT, positive_int, "metrics interval"),
    "eval_batch_size": Key(500, POSITIVE_INT, positive_int, "batch of evaluation and attacks"),
    "num_eval_examples": Key(
        None,
        "a positive integer or None",
        optional(positive_int),
        "test examples of the clean evaluation after training; None: the whole test split",
        int,
    ),
    "progress_bar": Key(True, "True or False", _is_bool, "tqdm bars on stderr"),
}

# Matrix estimation (docs/method.md §2-3).
ME: dict[str, Key] = {
    "method": Key(
        "usvt",
        *_registered("preprocess", "METHODS"),
        "the preprocessing (menet_jax.preprocess.METHODS); none is the vanilla baseline",
    ),
    "channels": Key(
        "concat",
        "concat or separate",
        _one_of("concat", "separate"),
        "concat: the H x (W*C) matrix [R|G|B] (the paper); separate: ME per channel",
    ),
    "p_start": Key(0.8, "in (0, 1]", _in_unit, "first observation probability of the schedule"),
    "p_end": Key(1.0, "in (0, 1]", _in_unit, "end of the observation-probability schedule"),
    "num_masks": Key(10, POSITIVE_INT, positive_int, "n: masked copies per training image"),
    "include_end": Key(
        False,
        "True or False",
        _is_bool,
        "False: the paper's text (a + k(b-a)/n, k=0..n-1); True: the authors' code (k=1..n)",
    ),
    "mode": Key(
        "offline",
        "offline or online",
        _one_of("offline", "online"),
        "offline: build S' once, cached in the workdir; online: ME inside the train step",
    ),
    "build_batch_size": Key(
        1024, POSITIVE_INT, positive_int, "offline: images reconstructed per device call"
    ),
    "sprime_dir": Key(
        None,
        "a local folder or None",
        optional(lambda v: isinstance(v, str) and v != "" and "://" not in v),
        "offline: the folder of the cached S' (a memory map, so on a local disk); None: "
        "WORKDIR/sprime, or for a gs:// workdir $MENET_CACHE/sprime (default ~/.cache/menet_jax)",
        str,
    ),
    "inference_p": Key(
        None,
        "in (0, 1] or None",
        optional(_in_unit),
        "test-time p; None: the mean of the training p's (Algorithm 1)",
        float,
    ),
    "votes": Key(
        10,
        POSITIVE_INT,
        positive_int,
        "k: masks of the majority-vote classifier (supplement J), at the training p's",
    ),
    "rank_fraction": Key(
        0.8, "in (0, 1]", _in_unit, "usvt rank rule: keep floor(rank_fraction * min(m, n))"
    ),
    "threshold": Key(
        "rank",
        "rank or chatterjee",
        _one_of("rank", "chatterjee"),
        "usvt: rank = the authors' coded rule; chatterjee = the textbook threshold",
    ),
    "shrinkage": Key(
        None,
        "a positive number or None",
        optional(positive),
        "softimpute lambda; None: sigma_max / 50 (fancyimpute)",
        float,
    ),
    "max_iters": Key(100, POSITIVE_INT, positive_int, "softimpute / nucnorm iteration cap"),
    "tol": Key(
        1e-3,
        POSITIVE,
        positive,
        "softimpute / nucnorm relative-change stopping tolerance",
    ),
    "accelerated": Key(
        None,
        "True, False or None",
        optional(_is_bool),
        "softimpute / nucnorm: warm-started accelerated iterations; None: the method's own "
        "default (softimpute False, the fancyimpute loop; nucnorm True)",
        bool,
    ),
    "mu": Key(1.0, POSITIVE, positive, "nucnorm weight"),
    "tv_weight": Key(0.03, POSITIVE, positive, "tvm: the TV weight lambda (Guo et al.'s 0.03)"),
    "tv_iterations": Key(  # the bound is me/tvm.py's MAX_ITERATIONS
        300, "an integer in [1, 100000]", lambda v: is_int(v) and 0 < v <= 100_000, "tvm: steps"
    ),
}

# Madry-style adversarial training through ME with BPDA (docs/method.md §3.5).
ADV: dict[str, Key] = {
    "enabled": Key(False, "True or False", _is_bool, "train on PGD examples"),
    "eps": Key(8 / 255, POSITIVE, positive, "L-inf radius"),
    "step_size": Key(2 / 255, POSITIVE, positive, "PGD step"),
    "steps": Key(7, POSITIVE_INT, positive_int, "PGD steps per training batch"),
    "random_start": Key(True, "True or False", _is_bool, "start in the eps-ball"),
    "attack_bn": Key(
        "eval",
        "eval or train",
        _one_of("eval", "train"),
        "BatchNorm during the attack: eval = running statistics; train = each forward pass's "
        "batch statistics, as the authors' train_adv.py ran it (their running statistics also "
        "moved during the attack; here they do not: docs/method.md §3.5)",
    ),
    "eps_ramp_epochs": Key(
        0.0,
        "a number >= 0",
        lambda v: is_num(v) and v >= 0,
        "epochs over which eps and step_size rise linearly from 0 to their values (not in the "
        "paper: short runs at a large eps, which otherwise stay at chance); 0: no ramp",
    ),
}

SECTIONS: dict[str, dict[str, Key]] = {"": TRAIN, "me": ME, "adv": ADV}


def section(keys: dict[str, Key]) -> ml_collections.ConfigDict:
    """A config section holding each key's default (a typed placeholder where it is None)."""
    c = ml_collections.ConfigDict()
    for name, key in keys.items():
        if key.default is None:
            c[name] = config_dict.placeholder(key.kind)
        else:
            c[name] = key.default
    return c


def default_config() -> ml_collections.ConfigDict:
    """The schema's defaults for the training, `me` and `adv` keys (no `eval` section)."""
    c = section(TRAIN)
    c.me = section(ME)
    c.adv = section(ADV)
    return c


def check_section(path: str, section_: ml_collections.ConfigDict, keys: dict[str, Key]) -> None:
    """Raises ConfigError on the first key of `section_` (at config.PATH) missing or not allowed."""
    prefix = f"{path}." if path else ""
    for name, key in keys.items():
        if name not in section_:
            raise ConfigError(f"config.{prefix}{name} is missing")
        value = section_[name]
        if not key.ok(value):
            allowed = key.allowed() if callable(key.allowed) else key.allowed
            raise ConfigError(
                f"config.{prefix}{name}={value!r} is not allowed; it must be {allowed}"
            )


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on the first training, `me` or `adv` value that is not allowed."""
    for prefix, keys in SECTIONS.items():
        check_section(prefix, config[prefix] if prefix else config, keys)
    me = config.me
    if me.p_start > me.p_end:
        raise ConfigError(
            f"config.me.p_start={me.p_start!r} must not exceed config.me.p_end={me.p_end!r}"
        )
    if config.model != "resnet18" and config.model_width != 64:
        raise ConfigError(
            f"config.model_width={config.model_width!r} applies to resnet18 only; "
            f"config.model={config.model!r} takes 64"
        )
    if config.dataset == "image_folder" and config.data_dir is None:
        _dataset_info(config)  # raises: the folder is needed
    _check_normalisation(config)
    importlib.import_module("menet_jax.preprocess").check_config(config)  # the method's modes


def _dataset_info(config: ml_collections.ConfigDict):
    """The dataset's DatasetInfo (an image folder's is read from its files)."""
    input_pipeline = importlib.import_module("menet_jax.input_pipeline")
    if config.dataset == input_pipeline.IMAGE_FOLDER and config.data_dir is None:
        raise ConfigError(
            "config.dataset='image_folder' needs config.data_dir: the folder holding "
            "train/<class>/ and test/<class>/ (--config.data_dir=ROOT)"
        )
    return input_pipeline.get_info(
        config.dataset, data_dir=config.data_dir, progress=config.get("progress_bar", True)
    )


def check_model_fits(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError when config.model cannot take the dataset's images.

    Reads the dataset's facts (an image folder is decoded on first use, then cached), so it is
    called where a run starts, not by `validate`.
    """
    info = _dataset_info(config)
    try:
        importlib.import_module("menet_jax.models").check_fits(config.model, info.image_shape)
    except ValueError as e:
        raise ConfigError(
            f"config.model={config.model!r} does not fit {info.source}: {e}"
        ) from None
    _check_normalisation(config, info)


def _check_normalisation(config: ml_collections.ConfigDict, info=None) -> None:
    mean, std = config.model_mean, config.model_std
    if (mean is None) != (std is None):
        raise ConfigError(
            f"config.model_mean={mean!r} and config.model_std={std!r} must be set together "
            "or both be None"
        )
    if mean is None:
        return
    if info is None:
        if config.dataset == importlib.import_module("menet_jax.input_pipeline").IMAGE_FOLDER:
            return  # checked against the files by check_model_fits
        info = _dataset_info(config)
    channels = info.image_shape[2]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(
            f"config.model_mean={mean!r} and config.model_std={std!r} must have one value per "
            f"channel of {config.dataset} ({channels})"
        )


# ---------------------------------------------------------------------------------------------
# config.json


def to_json(config: ml_collections.ConfigDict) -> str:
    """The text of WORKDIR/config.json: the schema version and the whole config."""
    return json.dumps(
        {"schema_version": SCHEMA_VERSION, "config": json.loads(config.to_json())}, indent=2
    )


def from_json(text: str, *, source: str) -> ml_collections.ConfigDict:
    """Parses a config.json of any known schema version (upgrading older ones).

    Raises:
      ConfigError: the text is not JSON, or its schema version is newer than this code's.
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} does not hold a config object")
    version = data.get("schema_version", 1)
    if version == 1:
        data = upgrade_v3(upgrade_v2(upgrade_v1(data)))
    elif version == 2:
        data = upgrade_v3(upgrade_v2(data["config"]))
    elif version == 3:
        data = upgrade_v3(data["config"])
    elif version == SCHEMA_VERSION:
        data = data["config"]
    else:
        raise ConfigError(
            f"{source} has config schema version {version!r}, newer than this menet-jax "
            f"understands ({SCHEMA_VERSION}); upgrade menet-jax to read it"
        )
    # Keys added within a schema version, whose default keeps what an older file meant.
    added = (("me", "sprime_dir", None), ("me", "tv_weight", 0.03), ("me", "tv_iterations", 300),
             ("eval", "n_eval", [1, 5, 20]), ("adv", "eps_ramp_epochs", 0.0))  # fmt: skip
    for section, key, value in added:
        if isinstance(data.get(section), dict):
            data[section].setdefault(key, value)
    data.setdefault("lr_schedule", "step")
    data.setdefault("lr_warmup_fraction", 0.1)
    return ml_collections.ConfigDict(data)


def upgrade_v1(old: dict) -> dict:
    """Converts a version-1 config (magic numbers for 'not set') to the current schema.

    Version 1 wrote -1 for "all"/"default" (num_train_examples, num_train_steps,
    num_eval_examples, me.inference_p, me.shrinkage), '' for the tfds default data dir and the
    coded USVT rule (me.threshold), and kept the vote size in two keys (me.votes, eval.votes).
    """
    new = json.loads(json.dumps(old))  # a deep copy
    for key in ("num_train_examples", "num_train_steps", "num_eval_examples"):
        if new.get(key, -1) == -1:
            new[key] = None
    new["data_dir"] = new.get("data_dir") or None
    me = new.get("me", {})
    for key in ("inference_p", "shrinkage"):
        if me.get(key, -1) <= 0:
            me[key] = None
    me["threshold"] = me.get("threshold") or "rank"
    eval_votes = new.get("eval", {}).pop("votes", 10)
    me["votes"] = me.get("votes") or eval_votes
    return new


# Version 2's flat eval keys -> version 3's (section, key).
_EVAL_V2 = {
    "pgd_steps": ("pgd", "steps"), "long_pgd_steps": ("pgd", "long_steps"),
    "long_pgd_examples": ("pgd", "long_examples"), "cw_kappas": ("cw", "kappas"),
    "eot_samples": ("eot", "samples"), "eot_steps": ("eot", "steps"),
    "eot_step_size": ("eot", "step_size"), "apgd_losses": ("apgd", "losses"),
    "apgd_steps": ("apgd", "steps"), "apgd_eot_samples": ("apgd", "eot_samples"),
    "source_workdir": ("transfer", "source_workdir"),
    "cw_l2_confidence": ("transfer", "cw_l2_confidence"),
    "cw_l2_steps": ("transfer", "cw_l2_steps"),
    "spsa_examples": ("spsa", "examples"), "spsa_steps": ("spsa", "steps"),
    "spsa_samples": ("spsa", "samples"), "spsa_learning_rate": ("spsa", "learning_rate"),
    "spsa_delta": ("spsa", "delta"), "boundary_examples": ("boundary", "examples"),
    "boundary_steps": ("boundary", "steps"), "boundary_proposals": ("boundary", "proposals"),
    "vote_examples": ("vote", "examples"), "sweep_examples": ("sanity", "examples"),
    "eps_multipliers": ("sanity", "eps_multipliers"),
}  # fmt: skip


def upgrade_v2(old: dict) -> dict:
    """Converts a version-2 config to version 3.

    Version 2 kept the evaluation's budgets as flat keys (`eval.eot_steps`; -1 for "all
    examples" or "the default step"; '' for no transfer source) where version 3 has one section
    per kind of row (`eval.eot.steps`; None). `me.accelerated = False` meant each method's default
    (softimpute's fancyimpute loop; nucnorm always accelerated), which version 3 writes None.
    """
    new = json.loads(json.dumps(old))  # a deep copy
    me = new.get("me", {})
    if not me.get("accelerated"):  # False was every method's default behaviour
        me["accelerated"] = None
    ev = new.get("eval")
    if isinstance(ev, dict):
        for flat, (sec, key) in _EVAL_V2.items():
            if flat in ev:
                value = ev.pop(flat)
                if value == -1 or value == -1.0 or value == "":
                    value = None
                ev.setdefault(sec, {})[key] = value
        if ev.get("num_examples") == -1:
            ev["num_examples"] = None
        ev.pop("cw_examples", None), ev.pop("eot_examples", None), ev.pop("apgd_examples", None)
    return new


def upgrade_v3(old: dict) -> dict:
    """Converts a version-3 config to version 4: the keys version 4 added, at the values that
    reproduce a version-3 run (ResNet-18 at width 64, the dataset's normalisation, the attack
    of adversarial training with running BatchNorm statistics)."""
    new = json.loads(json.dumps(old))  # a deep copy
    new.setdefault("model_width", 64)
    new.setdefault("model_mean", None)
    new.setdefault("model_std", None)
    if isinstance(new.get("adv"), dict):
        new["adv"].setdefault("attack_bn", "eval")
    return new


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:variant]` as `--config=` does (the entry points' flag uses it).

    Raises:
      ConfigError: the file does not exist, or running it failed (an unknown variant, a syntax
        error, any exception of the file's code), in one sentence naming the file.
    """
    path, colon, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        module_spec = importlib.util.spec_from_file_location("menet_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(*([arg] if colon else []))  # as ml_collections calls it
    except ConfigError:
        raise
    except Exception as e:  # the file is the user's code: whatever it raises is a config error
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
        at = f" (line {lines[-1]})" if lines and not isinstance(e, SyntaxError) else ""
        what = " ".join(str(e).split())
        raise ConfigError(
            f"config file {path!r} could not be run: {type(e).__name__}{at}: {what}"
        ) from e
