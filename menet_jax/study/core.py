"""The study framework: declarations, the model cache, the resumable run (docs/method.md §8).

A `Study` declares a grid of `Point`s. Each point is a dict of config overrides applied to the
base config, after the study's demo-scale `defaults` and the user's own overrides (so a point
always sets what its grid sweeps). A point trains the model of its training config, the config
without its `eval` section and the keys that do not change the trained weights (`model_key`), or
evaluates the model of another point (`model_of`); `transfer=True` points the point's transfer
rows at a vanilla model (me.method=none, no adversarial training) of the same training config.

Layout of a study's workdir DIR:

  DIR/models/<hash>/           one trained run per distinct training config (`train` code,
                               resumable), shared by every point and every study run in DIR;
                               finished when its summary.json exists.
  DIR/points/<name>/           the point's evaluation (`evaluation.evaluate`): config.json of its
                               model and `checkpoints`, a symlink to the model's checkpoints (no
                               copy), then results.json / .md / .npz and the evaluation's PNGs.
                               point.json fingerprints the model and evaluation settings: a point
                               is finished when results.json exists and the fingerprint matches.
  DIR/NAME.md, .json, .png     the study's table and figure (`menet_jax.study.output`).

A killed study run again with the same command skips every finished model and point; the
evaluation of an unfinished point resumes at its first unfinished row.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from menet_jax.config import ConfigError

# Keys that do not change the trained weights: logging, checkpointing, progress, the clean
# evaluation after training and the inference-time ME options.
NOT_TRAINING = (
    "progress_bar", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "eval_batch_size", "num_eval_examples", "me.votes", "me.inference_p", "me.build_batch_size",
    "me.sprime_dir",
)  # fmt: skip
# Keys a point's evaluation depends on beside its model (`evaluation.evaluate` reads these).
EVAL_KEYS = ("eval", "me.votes", "me.inference_p", "eval_batch_size")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclasses.dataclass(frozen=True)
class Point:
    """One point of a study's grid.

    Attributes:
      name: its name, also the folder DIR/points/<name>/ (letters, digits, `_.+-`).
      overrides: config overrides (`{"me.p_start": 0.2, "eval.eps": 0.1}`), the last applied.
      values: the point's coordinates, shown in the table and used by the plot (`{"p": 0.3}`).
      model_of: evaluate the model of that point instead of training base + overrides.
      transfer: set eval.transfer.source_workdir to the cached vanilla model (unless the user
        gave one).
      variant: train as the base config file's variant of that name does (`madry` for
        `configs/X.py:madry`): the training keys the variant changes (`variant_overrides`) are
        applied before `overrides`; needs the base config's file (`plan(config_spec=...)`).
    """

    name: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_of: str | None = None
    transfer: bool = False
    variant: str | None = None


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of the table: a row of results.json (`clean`, `headline` or an attack's name;
    an `fnmatch` pattern, formatted with the point's values first: "pgd_{steps}",
    "transfer_cw_*")."""

    label: str
    row: str


@dataclasses.dataclass(frozen=True)
class Quoted:
    """A row of figures quoted from the paper, not run here: shown under the table, marked as
    quoted, never plotted.

    Attributes:
      name: the row's name (`Thermometer`).
      source: where the figures come from (`supplement Table 11, CIFAR-10, from Athalye et al.`).
      cells: its text per column label or point-value key (`{"PGD-100": "9.0%"}`); the columns it
        lacks read "not reported".
    """

    name: str
    source: str
    cells: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Lines:
    """A line plot: accuracy (with its 95% interval) against `x`, one line per column and `group`
    value, one panel per `panel` value; points without `x` are drawn as dashed references."""

    x: str
    columns: tuple[str, ...]
    group: str | None = None
    panel: str | None = None
    xlabel: str | None = None
    logx: bool = False


@dataclasses.dataclass(frozen=True)
class Bars:
    """Grouped bars: one group per point, one bar per column, with 95% intervals."""

    columns: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Study:
    """A study of the supplement as one declaration.

    Attributes:
      name: the command's NAME.
      title: one line for `--list` and the table's heading.
      paper: the paper's protocol (docs/method.md §8).
      ours: what this study runs by default, and how it differs.
      points: the grid, or a function of the base config (after defaults and user overrides)
        returning it.
      defaults: demo-scale overrides of the base config (budgets, eval.attacks), or a function of
        the base config returning them; the user's overrides take precedence.
      columns: the table's columns beside clean accuracy and the headline.
      plot: `Lines` or `Bars`.
      paper_adversarial: the paper's figures came from adversarially trained models.
      pictures: a picture-only study (no evaluation): `fn(config, model_dirs, png_path)` ->
        (header, rows, data) for the table, given each point's trained model dir.
      quoted: rows of the paper's figures shown beside the points' (`Quoted`).
    """

    name: str
    title: str
    paper: str
    ours: str
    points: Sequence[Point] | Callable[[ml_collections.ConfigDict], Sequence[Point]]
    defaults: Mapping[str, Any] | Callable[[ml_collections.ConfigDict], Mapping[str, Any]] = (
        dataclasses.field(default_factory=dict)
    )
    columns: tuple[Column, ...] = ()
    plot: Lines | Bars | None = None
    paper_adversarial: bool = False
    pictures: Callable | None = None
    quoted: tuple[Quoted, ...] = ()


STUDIES: dict[str, Study] = {}


def register(study: Study, *, replace: bool = False) -> Study:
    """Adds `study` to the registry (`replace=True` overwrites a study of the same name)."""
    if study.name in STUDIES and not replace:
        raise ValueError(f"a study named {study.name!r} is already registered")
    STUDIES[study.name] = study
    return study


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; the studies are {', '.join(STUDIES)}")
    return STUDIES[name]


# ---------------------------------------------------------------------------------------------
# Configs and the model cache


def apply_overrides(config, overrides: Mapping[str, Any], *, where: str) -> None:
    """Sets each dotted key of `overrides` in `config` (in place); unknown keys are errors."""
    for key, value in overrides.items():
        *path, last = key.split(".")
        target = config
        for part in path:
            if part not in target or not isinstance(target[part], ml_collections.ConfigDict):
                raise ConfigError(f"{where} sets config.{key}, which is not a config key")
            target = target[part]
        if last not in target:
            raise ConfigError(f"{where} sets config.{key}, which is not a config key")
        try:
            target[last] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where} sets config.{key}={value!r}: {e}") from None


def _drop(d: dict, dotted: str) -> None:
    *path, last = dotted.split(".")
    for part in path:
        d = d.get(part, {})
    d.pop(last, None)


def model_key(config) -> dict:
    """The training-relevant config: everything but `eval` and `NOT_TRAINING`; a vanilla model
    keeps only me.method, a model without adversarial training only adv.enabled."""
    d = json.loads(config.to_json())
    d.pop("eval", None)
    for key in NOT_TRAINING:
        _drop(d, key)
    if d["me"]["method"] == "none":
        d["me"] = {"method": "none"}
    if not d["adv"]["enabled"]:
        d["adv"] = {"enabled": False}
    # Keys added since schema 3 (schema 4's, the learning-rate schedule's, the eps ramp's),
    # dropped at their defaults so that models cached before keep their hashes.
    for dotted, default in _ADDED_DEFAULTS.items():
        *path, key = dotted.split(".")
        part = d
        for name in path:
            part = part.get(name, {})
        if key in part and part[key] == default:
            del part[key]
    if d["adv"].get("attack_bn") == "eval":
        del d["adv"]["attack_bn"]
    return d


_ADDED_DEFAULTS = {
    "model_width": 64,
    "model_mean": None,
    "model_std": None,
    "lr_schedule": "step",
    "lr_warmup_fraction": 0.1,
    "me.tv_weight": 0.03,
    "me.tv_iterations": 300,
    "adv.eps_ramp_epochs": 0.0,
}


def model_hash(config) -> str:
    """The model cache's key: a hash of `model_key(config)`'s canonical JSON."""
    text = json.dumps(model_key(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def vanilla_config(config):
    """The transfer source of `config`: the same training without ME or adversarial training."""
    c = copy.deepcopy(config)
    c.me.method = "none"
    c.adv.enabled = False
    return c


def _flat(config, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def variant_overrides(config_spec: str, variant: str) -> dict:
    """The training keys that `configs/X.py[:A]`'s variant `variant` changes, as overrides:
    `configs/X.py:A,variant` against `configs/X.py:A`, without the `eval` section (a point's
    evaluation stays the study's)."""
    from menet_jax.config import load_config

    path, _, arg = config_spec.partition(":")
    plain = _flat(load_config(config_spec))
    varied = _flat(load_config(f"{path}:{arg + ',' if arg else ''}{variant}"))
    return {k: v for k, v in varied.items()
            if not k.startswith("eval.") and plain.get(k) != v}  # fmt: skip


def _resolve(value, config):
    return value(config) if callable(value) else value


@dataclasses.dataclass
class Planned:
    """A point with its configs and folders resolved.

    Attributes:
      point: the declaration.
      config: its full config (base, defaults, user overrides, the point's overrides).
      model: the hash of the model it evaluates (DIR/models/<model>/).
      source: the hash of its transfer source model, or None.
    """

    point: Point
    config: ml_collections.ConfigDict
    model: str
    source: str | None = None


def plan(
    study: Study,
    config,
    workdir: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    config_spec: str | None = None,
):
    """The study's points with their configs and models, and the models to train.

    `config_spec` is the file `config` came from (`configs/mnist_demo.py[:variant]`), which a
    point with a `variant` needs.

    Returns:
      (base config, [Planned], {hash: training config}) with the models in first-use order.
    """
    base = copy.deepcopy(config)
    apply_overrides(base, _resolve(study.defaults, base), where=f"study {study.name!r}")
    apply_overrides(base, overrides or {}, where="the command line")
    points = list(_resolve(study.points, base))
    names = [p.name for p in points]
    for p in points:
        if not _NAME.match(p.name) or names.count(p.name) > 1:
            raise ConfigError(f"study {study.name!r}: point name {p.name!r} is not a unique "
                              "folder name (letters, digits, _.+-)")  # fmt: skip
    by_name = {p.name: p for p in points}
    for p in points:
        if p.variant is not None:
            if not config_spec:
                raise ConfigError(
                    f"study {study.name!r}: point {p.name!r} trains as the config file's "
                    f"{p.variant!r} variant, so the study needs the config file "
                    "(--config=configs/X.py, or run_study(config_spec=...))"
                )
            own = {**variant_overrides(config_spec, p.variant), **p.overrides}
            by_name[p.name] = dataclasses.replace(p, overrides=own, variant=None)
    points = [by_name[p.name] for p in points]
    models: dict[str, ml_collections.ConfigDict] = {}
    out = []
    user_source = base.eval.transfer.source_workdir
    for p in points:
        c = copy.deepcopy(base)
        if p.model_of is not None:
            if p.model_of not in by_name or by_name[p.model_of].model_of is not None:
                raise ConfigError(f"study {study.name!r}: point {p.name!r} evaluates the model "
                                  f"of {p.model_of!r}, which is not a training point")  # fmt: skip
            apply_overrides(c, by_name[p.model_of].overrides, where=f"point {p.model_of!r}")
        apply_overrides(c, p.overrides, where=f"point {p.name!r}")
        train_config = copy.deepcopy(c)
        if p.model_of is not None:  # the other point's training, this point's evaluation
            train_config = copy.deepcopy(base)
            apply_overrides(train_config, by_name[p.model_of].overrides, where="")
        h = model_hash(train_config)
        models.setdefault(h, train_config)
        entry = Planned(p, c, h)
        if p.transfer and not user_source:
            src = vanilla_config(train_config)
            entry.source = model_hash(src)
            models.setdefault(entry.source, src)
            c.eval.transfer.source_workdir = model_dir(workdir, entry.source)
        out.append(entry)
    return base, out, models


def model_dir(workdir: str, h: str) -> str:
    return os.path.join(os.path.abspath(workdir), "models", h)


def point_dir(workdir: str, name: str) -> str:
    return os.path.join(os.path.abspath(workdir), "points", name)


def model_finished(workdir: str, h: str) -> bool:
    return os.path.isfile(os.path.join(model_dir(workdir, h), "summary.json"))


def ensure_model(workdir: str, h: str, train_config) -> bool:
    """Trains model `h` unless finished (resuming a killed training); True when it trained."""
    if model_finished(workdir, h):
        return False
    from menet_jax import train

    d = model_dir(workdir, h)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "training_config.json"), "w") as f:
        json.dump(model_key(train_config), f, indent=2, sort_keys=True)
    print(f"training model {h} ({_describe(train_config)})", file=sys.stderr)
    train.train_and_evaluate(train_config, d)
    return True


def _describe(c) -> str:
    if c.me.method == "none":
        what = "vanilla"
    else:
        what = f"{c.me.method}, {c.me.num_masks} masks, p {c.me.p_start:g}-{c.me.p_end:g}"
    return what + (", adversarially trained" if c.adv.enabled else "")


# ---------------------------------------------------------------------------------------------
# Points


def fingerprint(entry: Planned) -> dict:
    """What a point's results depend on: its model, its source and its evaluation settings."""
    d = json.loads(entry.config.to_json())
    ev = {k: d[k] for k in EVAL_KEYS if "." not in k}
    ev["me"] = {k.split(".")[1]: d["me"][k.split(".")[1]] for k in EVAL_KEYS if "." in k}
    if entry.source is not None:
        ev["eval"]["transfer"]["source_workdir"] = f"models/{entry.source}"
    # Added after points were evaluated, so finished points stay finished: the all-N figures
    # (docs/method.md §6.8, dropped at their default) change no other figure, and the
    # autoattack_rand row's budget (§6.9) only counts where eval.attacks runs it.
    from menet_jax.evaluation import settings

    if ev["eval"].get("n_eval") == list(settings.COMMON["n_eval"].default):
        del ev["eval"]["n_eval"]
    if "autoattack_rand" not in settings.parse_attacks(ev["eval"]["attacks"]):
        ev["eval"].pop("autoattack_rand", None)
    return {"model": entry.model, "source": entry.source, "evaluation": ev}


def point_finished(workdir: str, entry: Planned) -> bool:
    d = point_dir(workdir, entry.point.name)
    try:
        with open(os.path.join(d, "point.json")) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return False
    return os.path.isfile(os.path.join(d, "results.json")) and old == fingerprint(entry)


def prepare_point(workdir: str, entry: Planned) -> str:
    """DIR/points/<name>/ ready for `evaluation.evaluate`: the model's config.json, a symlink to
    its checkpoints and point.json; stale results of other settings are removed."""
    d = point_dir(workdir, entry.point.name)
    os.makedirs(d, exist_ok=True)
    fp = fingerprint(entry)
    stamp = os.path.join(d, "point.json")
    old = None
    if os.path.isfile(stamp):
        with open(stamp) as f:
            old = json.load(f)
    if old is not None and old != fp:
        for name in ("results.json", "results.md", "results.npz"):
            if os.path.exists(os.path.join(d, name)):
                os.remove(os.path.join(d, name))
        print(f"note: point {entry.point.name} was evaluated with other settings; "
              "evaluating it again", file=sys.stderr)  # fmt: skip
    src = model_dir(workdir, entry.model)
    shutil.copyfile(os.path.join(src, "config.json"), os.path.join(d, "config.json"))
    link = os.path.join(d, "checkpoints")
    target = os.path.relpath(os.path.join(src, "checkpoints"), d)
    if os.path.islink(link) and os.readlink(link) != target:
        os.remove(link)
    if not os.path.islink(link):
        os.symlink(target, link)
    with open(stamp + ".tmp", "w") as f:
        json.dump(fp, f, indent=2, sort_keys=True)
    os.replace(stamp + ".tmp", stamp)
    return d


def run_point(workdir: str, entry: Planned) -> bool:
    """Evaluates one point unless finished; True when it ran."""
    if point_finished(workdir, entry):
        return False
    from menet_jax import evaluation

    d = prepare_point(workdir, entry)
    print(f"evaluating point {entry.point.name}", file=sys.stderr)
    evaluation.evaluate(entry.config, d)
    return True
