"""The attack suite on any JAX classifier: a user's logits function and optional preprocessing.

  report = evaluation.evaluate_model(logits_fn, x, y, workdir=OUT, preprocess=None)

`evaluate_model` wraps the user's functions in a `FunctionClassifier`, which has the `apply` /
`logits_fn` interface of `defense.DefendedClassifier`, and hands it to the suite's own
`target.EvaluatedClassifier`, `suite.plan_rows`, `suite.run_plan` and `report`: the same rows,
judging draws, headline, sanity checks and results.json / .md / .npz as `evaluation.evaluate`.
The preprocessing is None, deterministic (`f(x) -> x'`) or randomised (`f(key, x) -> x'`,
`randomized=True`: every attack and judging draw gets a fresh key, as ME's masks do); white-box
attacks pass gradients straight through it (BPDA) unless it is `differentiable`. What a user
model does not have is skipped or adapted with its reason in the report (docs/method.md §6.7).
`check_inputs` refuses bad inputs in one sentence (`InputError`) before any attack runs.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from menet_jax import defense, paths, rng
from menet_jax import preprocess as preprocess_lib
from menet_jax.config import ConfigError
from menet_jax.evaluation import plots, report, settings, suite
from menet_jax.evaluation.target import EvaluatedClassifier


class InputError(ValueError):
    """An input `evaluate_model` cannot evaluate; the message is one sentence."""


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (jit of bound methods)
class FunctionClassifier(defense.LogitsFunctions):
    """A user's logits function behind an optional preprocessing, as the evaluation sees it.

    Attributes:
      network_fn: `(state, x) -> logits [B, C]`, x [B, H, W, C] in [0, 1].
      state: the pytree passed to network_fn (the user's params, or () for a closure).
      num_classes: C.
      preprocess_fn: None, `f(x)` (deterministic) or `f(key, x)` (randomised).
      randomized: preprocess_fn takes a key and its output depends on it.
      has_exact_gradient: jax.grad through preprocess_fn is its true gradient.
      votes: k of the majority vote over k fresh draws (randomised only).
      mesh: the device mesh (set by `EvaluatedClassifier`; the user's functions are jitted
        on sharded batches as they are).

    `apply(state, x, key, mode=...)` has `DefendedClassifier.apply`'s modes: "menet" (the
    preprocessing, one fresh draw, then the network; gradients by "bpda" straight-through,
    "exact" or "none"), "network", "fixed_mask" (the draw of `mask_key`), "vote" and
    "vote_soft" (k fresh draws).
    """

    network_fn: Callable
    state: Any
    num_classes: int
    preprocess_fn: Callable | None = None
    randomized: bool = False
    has_exact_gradient: bool = False
    votes: int = 10
    mesh: Any = None
    step: int = 0
    _fns: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def has_preprocessing(self) -> bool:
        return self.preprocess_fn is not None

    def describe(self) -> str:
        if self.preprocess_fn is None:
            return "no preprocessing"
        kind = "randomised" if self.randomized else "deterministic"
        grad = "exact gradient" if self.has_exact_gradient else "BPDA only"
        return f"a {kind} preprocessing ({grad})"

    def lacks(self, need: str) -> str:
        if need == "exact_gradient":
            return "the preprocessing has no exact gradient (differentiable=False)"
        if need == "preprocessing":
            return "the model has no preprocessing (preprocess=None): the bare network is the model"
        what = "a deterministic preprocessing" if self.has_preprocessing else "no preprocessing"
        return (
            f"the model is deterministic ({what}): every draw is the same, so EOT, the vote "
            "and a fixed draw add nothing to the PGD rows"
        )

    def transform(self, x: jax.Array, key: jax.Array | None, gradient: str) -> jax.Array:
        """The preprocessed images, with the gradient rule `gradient`."""
        if self.preprocess_fn is None:
            return x
        out = self.preprocess_fn(key, x) if self.randomized else self.preprocess_fn(x)
        if gradient == "bpda":
            return preprocess_lib.straight_through(x, out)
        if gradient == "exact" and not self.has_exact_gradient:
            raise ValueError("gradient='exact' needs differentiable=True for this preprocessing.")
        return out

    def apply(
        self,
        state,
        x,
        key,
        *,
        mode="menet",
        gradient="bpda",
        p=None,
        mask_key=None,
        votes=None,
        bn="eval",
    ) -> jax.Array:
        """Logits (or vote fractions) of `mode` for images x (`p` and `bn` do not apply)."""
        del p, bn
        if mode not in defense.MODES or gradient not in defense.GRADIENTS:
            raise ValueError(
                f"mode must be one of {defense.MODES}, gradient one of "
                f"{defense.GRADIENTS}; got {mode!r}, {gradient!r}."
            )
        if mode == "network":
            return self.network_fn(state, x)
        if mode == "fixed_mask":
            return self.apply(state, x, mask_key, mode="menet", gradient=gradient)
        if mode in ("vote", "vote_soft"):
            k = votes or self.votes

            def one(kk):
                logits = self.apply(state, x, kk, mode="menet", gradient=gradient)
                if mode == "vote_soft":
                    return jax.nn.log_softmax(logits, -1)
                return jax.nn.one_hot(jnp.argmax(logits, -1), self.num_classes)

            per_draw = jax.lax.map(one, jax.random.split(key, k))
            if mode == "vote_soft":
                return jax.nn.logsumexp(per_draw, axis=0) - jnp.log(k)
            return jnp.mean(per_draw, axis=0)
        return self.network_fn(state, self.transform(x, key, gradient))

    def preprocess(self, x: jax.Array, key: jax.Array, *, p=None, bpda: bool = False):
        """One draw of the preprocessing (as `DefendedClassifier.preprocess`)."""
        del p
        return self.transform(x, key, "bpda" if bpda else "none")

    def network(self, x: jax.Array) -> jax.Array:
        return self.network_fn(self.state, x)


# ---------------------------------------------------------------------------------------------
# Inputs, checked before any attack runs


def _images(x) -> np.ndarray:
    """x as float32 in [0, 1], or InputError."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise InputError(
            f"x must be images [N, H, W, C] (rank 4), got shape {x.shape}; give a grayscale "
            "batch a channel axis (x[..., None])"
        )
    if len(x) == 0:
        raise InputError(f"x holds no images (shape {x.shape}); pass at least one example")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"x must be uint8 pixels or floats in [0, 1], got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise InputError(
            f"x holds {int(np.sum(~np.isfinite(x)))} NaN or inf values; "
            "images must be finite floats in [0, 1]"
        )
    lo, hi = float(x.min()), float(x.max())
    if hi > 1 and hi <= 255 and lo >= 0 and np.all(x == np.round(x)):
        raise InputError(
            f"x holds whole numbers up to {hi:g}, uint8 pixels given as floats: "
            "pass x as uint8, or x / 255 as floats in [0, 1]"
        )
    if lo < 0 or hi > 1:
        raise InputError(
            f"x must be in [0, 1] (the attacks clip to it), has values in "
            f"[{lo:g}, {hi:g}]; undo any normalisation and do it inside logits_fn"
        )
    return x.astype(np.float32)


def _labels(y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InputError(
            f"y must be integer class labels [N], got shape {y.shape} and dtype {y.dtype}"
        )
    if len(y) != n:
        raise InputError(f"x and y differ in length: {n} images and {len(y)} labels")
    return y.astype(np.int32)


def _looks_like_probabilities(out: np.ndarray) -> bool:
    rows_sum_to_one = np.abs(out.sum(-1) - 1) < 1e-4
    return bool(np.all(rows_sum_to_one & np.all((out >= 0) & (out <= 1), -1)))


def _check_output(out, b: int, where: str) -> int:
    out = np.asarray(out)
    if out.ndim != 2 or out.shape[0] != b or out.shape[1] < 2:
        raise InputError(
            f"{where} must return logits [B, num_classes >= 2]; on a batch of {b} "
            f"images it returned shape {out.shape}"
        )
    bad = ~np.all(np.isfinite(out), -1)
    if bad.any():
        raise InputError(
            f"{where} returned NaN or inf logits for {int(bad.sum())} of the first {b} examples"
        )
    if _looks_like_probabilities(out):
        raise InputError(
            f"{where} returns probabilities (every row of the first {b} examples is in [0, 1] "
            "and sums to 1): return the logits before the softmax, whose losses do not saturate"
        )
    return out.shape[1]


def check_inputs(
    clf: FunctionClassifier, x, y, *, batch: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The images as float32 in [0, 1], the labels as int32 and the number of classes; raises
    InputError (one sentence) for a bad rank, range, dtype or length of x or y, labels out of
    range, or logits that are not finite logits on the first batch (bare and preprocessed)."""
    images = _images(x)
    labels = _labels(y, len(images))
    first = jnp.asarray(images[:batch])
    c = _check_output(jax.jit(clf.network)(first), len(first), "logits_fn")
    if labels.min() < 0 or labels.max() >= c:
        raise InputError(
            f"y must hold labels in [0, {c}) (logits_fn gives {c} classes), has "
            f"labels from {labels.min()} to {labels.max()}"
        )
    if clf.preprocess_fn is not None:
        call = "preprocess(key, x)" if clf.randomized else "preprocess(x)"
        key = rng.stream(0, rng.SANITY)
        try:
            out = jax.jit(clf.preprocess)(first, key)
        except TypeError as e:
            other = ("deterministic", "False") if clf.randomized else ("randomised", "True")
            raise InputError(
                f"calling {call} failed ({e}); a {other[0]} preprocessing needs "
                f"randomized={other[1]}"
            ) from e
        if out.shape != first.shape or not bool(jnp.all(jnp.isfinite(out))):
            raise InputError(
                f"{call} must return finite images of its input's shape "
                f"{first.shape}, returned shape {out.shape}"
            )
        _check_output(clf.network(out), len(first), f"logits_fn after {call}")
    return images, labels, c


# ---------------------------------------------------------------------------------------------
# The config


def eval_settings(
    config=None, overrides: Mapping[str, Any] | None = None, *, differentiable: bool = False
) -> ml_collections.ConfigDict:
    """The `eval` section in force: `config` (an eval section, or a config holding one; default
    `settings.eval_config()` with `gradient` "exact" when the preprocessing is differentiable,
    else "bpda"), then `overrides` ({"pgd.steps": (10,), ...}), checked by `validate_eval`."""
    if config is None:
        ev = settings.eval_config()
        ev.gradient = "exact" if differentiable else "bpda"
    else:
        ev = copy.deepcopy(config.eval if "eval" in config else config)
    for key, value in (overrides or {}).items():
        *path, last = key.split(".")
        section = ev
        for part in path:
            section = section.get(part) if isinstance(section, ml_collections.ConfigDict) else None
        if not isinstance(section, ml_collections.ConfigDict) or last not in section:
            raise ConfigError(
                f"overrides key {key!r} is not an eval key (e.g. 'num_examples', "
                "'pgd.steps'; settings.eval_config() lists them)"
            )
        try:
            section[last] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"overrides[{key!r}]={value!r} has the wrong type ({e})") from e
    settings.validate_eval(ev)
    if ev.gradient == "exact" and not differentiable:
        raise ConfigError(
            "config.eval.gradient='exact' needs differentiable=True (a "
            "preprocessing with a true jax.grad); use 'bpda'"
        )
    return ev


# ---------------------------------------------------------------------------------------------
# The evaluation


def _adapt(ev, groups: set[str], clf: FunctionClassifier) -> tuple[list[str], dict]:
    """Changes to the rows for a user model: (sentences for the report, kinds skipped)."""
    notes, skipped = [], {}
    if not clf.randomized and int(ev.eval_keys) != 1:
        notes.append(
            f"a deterministic model: judged on 1 measurement and 1 selection draw "
            f"instead of eval_keys={ev.eval_keys}"
        )
        ev.eval_keys = 1
    if "apgd" in groups:
        need = {"dlr": 3, "dlr_targeted": 4}
        keep = [loss for loss in ev.apgd.losses if clf.num_classes >= need.get(loss, 2)]
        if len(keep) < len(ev.apgd.losses):
            notes.append(
                f"APGD losses {sorted(set(ev.apgd.losses) - set(keep))} need more "
                f"classes than {clf.num_classes}: dropped"
            )
        if keep:
            ev.apgd.losses = tuple(keep)
        else:
            groups.discard("apgd")
            skipped["apgd"] = (
                f"no APGD loss of eval.apgd.losses works with {clf.num_classes} classes"
            )
    if "autoattack_rand" in groups and clf.num_classes < 3:
        groups.discard("autoattack_rand")
        skipped["autoattack_rand"] = f"APGD-DLR needs at least 3 classes, not {clf.num_classes}"
    if "transfer" in groups:
        groups.discard("transfer")
        skipped["transfer"] = (
            "transfer attacks a menet-jax source model "
            "(eval.transfer.source_workdir); evaluate_model takes none"
        )
    return notes, skipped


def evaluate_model(
    logits_fn: Callable,
    x,
    y,
    *,
    workdir: str,
    preprocess: Callable | None = None,
    randomized: bool = False,
    differentiable: bool = False,
    params: Any = None,
    config: ml_collections.ConfigDict | None = None,
    overrides: Mapping[str, Any] | None = None,
    batch_size: int = 128,
    votes: int = 10,
    seed: int = 0,
    name: str = "user model",
    progress_bar: bool = True,
) -> dict:
    """Runs the attack suite on a user's JAX classifier; writes WORKDIR/results.json / .md / .npz.

    Args:
      logits_fn: a pure, jittable `logits_fn(x) -> logits [B, num_classes]` (or
        `logits_fn(params, x)` when `params` is given), x [B, H, W, C] in [0, 1]; e.g. a closure
        over a Flax NNX model, or `functools.partial(model.apply, variables)` for Linen.
      x: test images [N, H, W, C], uint8 or floats in [0, 1].
      y: integer labels [N] in [0, num_classes).
      workdir: the folder for the report (created).
      preprocess: None, `f(x) -> x'` (deterministic) or `f(key, x) -> x'` (randomised), pure
        and jittable, x' of x's shape; the network sees x'.
      randomized: `preprocess` takes a typed key first and draws from it: every attack step and
        judging draw passes a fresh key (docs/method.md §6.1).
      differentiable: jax.grad through `preprocess` is its true gradient: the fixed-draw
        sanity row runs, and `eval.gradient` may be "exact" (white-box rows differentiate
        through it instead of BPDA's identity), its default unless `config` sets it.
      params: a pytree passed to `logits_fn` as its first argument (traced, not baked into the
        compiled code: better for large models).
      config: the `eval` section (`settings.eval_config()`'s keys: rows, eps, budgets), or a
        config holding one; default `settings.eval_config()`.
      overrides: eval keys to change, {"num_examples": 100, "pgd.steps": (20,), ...}.
      batch_size: examples per batch (divisible by the device count).
      votes: k of the majority vote over k fresh draws (randomised preprocessing).
      seed: the root of the attack and judging keys.
      name: the model's name in the report.
      progress_bar: show a progress bar on stderr.

    Returns:
      The report written to results.json.

    Raises:
      InputError: x, y, logits_fn or preprocess cannot be evaluated (one sentence).
      ConfigError: a config value or override is not allowed.
    """
    t_start = time.time()
    ev = eval_settings(config, overrides, differentiable=differentiable)
    if preprocess is None and (randomized or differentiable):
        raise InputError(
            "randomized and differentiable describe a preprocessing; with "
            "preprocess=None leave them False"
        )
    if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
        raise ConfigError(f"votes={votes!r} must be a positive integer (draws of the vote)")
    if batch_size <= 0 or batch_size % jax.device_count():
        raise ConfigError(
            f"batch_size={batch_size} must be a positive multiple of the number "
            f"of devices ({jax.device_count()})"
        )
    network_fn = (lambda state, z: logits_fn(z)) if params is None else logits_fn
    state = () if params is None else params
    clf = FunctionClassifier(
        network_fn, state, 0, preprocess, bool(randomized), bool(differentiable), int(votes)
    )
    images, labels, c = check_inputs(clf, x, y, batch=batch_size)
    clf = dataclasses.replace(clf, num_classes=c)
    groups = settings.parse_attacks(ev.attacks)
    notes, skipped = _adapt(ev, groups, clf)
    top5 = c > 10
    model = EvaluatedClassifier(clf, votes=clf.votes, top5=top5, gradient=ev.gradient)
    n_all = len(labels) if ev.num_examples is None else min(int(ev.num_examples), len(labels))
    R = int(ev.eval_keys)
    data = (images[:n_all], labels[:n_all], suite.judging_keys(seed, R))
    keys = {"attack": rng.stream(seed, rng.ATTACK), "sanity": rng.stream(seed, rng.SANITY)}
    if ev.n_eval:
        keys["all_draws"] = suite.all_draws_keys(seed, max(ev.n_eval))
    plan = suite.plan_rows(ev, groups, model, None, n_all)
    plan.skipped.update(skipped)
    bar = ml_collections.ConfigDict({"progress_bar": progress_bar})
    results, seconds, _, runtime = suite.run_plan(
        plan, model, data, keys, batch_size=batch_size, runtime_checks=bool(groups - {"clean"}),
        config=bar,
    )  # fmt: skip
    out = report.build(plan, results, seconds, runtime=runtime, top5=top5, num_classes=c, R=R)
    _describe(out, clf, ev, notes, workdir=workdir, name=name)
    out["budgets"]["total_seconds"] = round(time.time() - t_start, 2)
    arrays = out.pop("_arrays")
    if jax.process_index() == 0:
        paths.makedirs(workdir)
        report.write(out, arrays, workdir)
        plots.write_figures(out, workdir)
    return out


def _describe(out: dict, clf: FunctionClassifier, ev, notes: list[str], *, workdir, name) -> None:
    """results.json's description of the model and the run, beside `report.build`'s content."""
    kind = "randomized" if clf.randomized else "deterministic" if clf.has_preprocessing else "none"
    out.update(
        workdir=paths.abspath(workdir),
        step=None,
        dataset=None,
        model=name,
        num_classes=clf.num_classes,
        me={"method": clf.describe(), "inference_p": None, "votes": clf.votes},
        user_model={
            "name": name,
            "preprocessing": kind,
            "differentiable": clf.has_exact_gradient,
            "gradient": ev.gradient,
            "adapted": notes,
        },
        inference_overrides={},
        source_workdir=None,
        eval_keys=int(ev.eval_keys),
        resumed_rows=[],
        devices={
            "count": jax.device_count(),
            "processes": jax.process_count(),
            "kind": jax.devices()[0].device_kind,
        },
    )
