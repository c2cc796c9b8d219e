"""The attack suite: the rows of `config.eval.attacks`, run on a trained run's checkpoint.

`evaluate(config, workdir, overrides=...)` restores WORKDIR's classifier under the config in force
(`config_in_force`, docs/method.md §6.6): the run's WORKDIR/config.json with the evaluation's
own settings from `config` (the budgets `config.eval`, `eval_batch_size`, the vote size
`config.me.votes`, an optional `config.me.inference_p`) and the ME inference options the caller
set on purpose (`overrides`: me.method, the solver's options). It plans the rows of the selected
kinds (`rows.KINDS`: each kind of row, its config section, threat model and checks, is defined
once there), runs them one after another on prefixes of the run's test split, and writes
results.json / .md / .npz (`report`) and the evaluation's figures (`plots`: PNGs,
TensorBoard). The counted rows (white-box and gray-box at eval.eps) all run on the first
eval.num_examples examples and make the headline; the others are diagnostics.

Judging (docs/method.md §6, `protocol`): 2R = 2 * eval.eval_keys draws shared by every row
(`judging_keys`); draw r masks example i with fold_in(rng.stream(seed, rng.JUDGE), r) folded with
i; draws 0..R-1 measure, R..2R-1 select. Every restart's images are judged. Attacks draw from
rng.named(rng.stream(seed, rng.ATTACK), row name), then the batch index (restart r > 0 folds in
r); no attack sees a judging key. The N-evaluation (docs/method.md §6.8, `n_eval`) judges each
counted row's kept images once more on max(eval.n_eval) draws of a stream of their own
(`all_draws_keys`).

Devices: the evaluation runs on every device of every process (docs/method.md §6.6). A batch
of eval_batch_size examples (divisible by the device count; a row of fewer examples is padded to
a multiple of it, one batch, so its keys stay batch 0's) is sharded over the 'data' mesh like a
training batch, each process supplying its contiguous slice; the network is replicated, ME runs
per device and the per-example judges run whole per device (`target.EvaluatedClassifier`).
Every draw depends on the example's index and its batch only, so the results are those of one
device. Results come back replicated to every process in the same order; process 0 alone writes
results.json / .md / .npz, the figures, TensorBoard and eval_partial/.

Resuming: each finished row is saved to WORKDIR/eval_partial/ with a fingerprint of everything
that decides its result (the eval config, the checkpoint, the ME options); a killed evaluation
run again with the same settings starts at the first row that did not finish. The folder is
removed once results.json is written. On SIGTERM (`menet_jax.preemption`) the evaluation stops
after the current row is saved and raises `preemption.Preempted`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from menet_jax import (
    attacks,
    checkpoint,
    cluster,
    defense,
    input_pipeline,
    monitor,
    paths,
    preemption,
    preprocess,
    rng,
)
from menet_jax.config import ConfigError
from menet_jax.evaluation import plots, protocol, report
from menet_jax.evaluation.rows import KINDS, Plan, Row
from menet_jax.evaluation.settings import parse_attacks, validate_eval
from menet_jax.evaluation.target import EvaluatedClassifier


def judging_keys(seed: int, draws: int) -> jax.Array:
    """The 2R judging keys: draws 0..R-1 measure, R..2R-1 select (docs/method.md §6.2)."""
    root = rng.stream(seed, rng.JUDGE)
    return jax.vmap(lambda r: jax.random.fold_in(root, r))(jnp.arange(2 * draws, dtype=jnp.uint32))


def all_draws_keys(seed: int, draws: int) -> jax.Array:
    """The N-evaluation's max(N) draws (docs/method.md §6.8): a stream of the judging root of
    its own (`rng.ALL_DRAWS`), so no attack and no judging draw shares a key with them."""
    root = jax.random.fold_in(rng.stream(seed, rng.JUDGE), rng.ALL_DRAWS)
    return jax.vmap(lambda r: jax.random.fold_in(root, r))(jnp.arange(draws, dtype=jnp.uint32))


def global_batch(n: int, batch_size: int, devices: int) -> int:
    """The global batch of a row of n examples: eval_batch_size, or n rounded up to a multiple
    of the device count when fewer (padded); one batch then, so its keys stay batch 0's."""
    return min(batch_size, -(-n // devices) * devices)


def _batches(x_all: np.ndarray, y_all: np.ndarray, n: int, bs: int, model: EvaluatedClassifier):
    """(batch index, start, real size m, images, labels) of the first n examples in batches of
    bs, the last one padded to bs (`input_pipeline.pad_batch`), so every batch has one shape;
    images and labels sharded over the mesh (`EvaluatedClassifier.put`)."""
    for b, start in enumerate(range(0, n, bs)):
        m = min(bs, n - start)
        x = model.put(input_pipeline.pad_batch(x_all[start : start + m], bs))
        y = model.put(input_pipeline.pad_batch(y_all[start : start + m], bs))
        yield b, start, m, x, y


def run_row(row: Row, model: EvaluatedClassifier, data, keys, cache: dict, batch_size: int) -> dict:
    """Attacks and judges one row: `correct` / `top5` bool [restarts, 2R, n] (the first R
    draws measure, the last R select), plus per-example randomness flags of restart 0. A `make`
    that returns (x_adv, {name: bool [B]}) (the autoattack_rand row's own verdicts) has each
    flag kept as `aux_<name>` bool [restarts, n]."""
    x_all, y_all, judge_keys = data
    n, bs = row.n, global_batch(row.n, batch_size, model.mesh.size)
    row_key = rng.named(keys["attack"], row.name)
    judge_keys = model.replicate(judge_keys)
    draws = len(judge_keys)
    restarts = cache[row.reuse].shape[0] if row.reuse is not None else row.restarts
    out = {
        "correct": np.zeros((restarts, draws, n), bool),
        "top5": np.zeros((restarts, draws, n), bool),
        "pred_varies": np.zeros(n, bool),
        "logits_vary": np.zeros(n, bool),
    }
    keep = row.counted or row.name in cache  # images for results.npz or a reusing row
    advs = np.zeros((restarts, n, *x_all.shape[1:]), np.float32) if keep else None
    dist = np.zeros(n, np.float32)
    for b, start, m, x, y in _batches(x_all, y_all, n, bs, model):
        idx = model.put(input_pipeline.pad_batch(np.arange(start, start + m, dtype=np.int32), bs))
        key = model.replicate(jax.random.fold_in(row_key, b))
        for r in range(restarts):
            if row.reuse is not None:
                x_adv = model.put(input_pipeline.pad_batch(cache[row.reuse][r, start:][:m], bs))
            else:  # restart 0 keeps the batch key, so one-restart rows draw as before
                x_adv = row.make(x, y, key if r == 0 else jax.random.fold_in(key, r))
                if isinstance(x_adv, tuple):
                    x_adv, aux = x_adv
                    for k, v in model.host(aux).items():
                        out.setdefault(f"aux_{k}", np.zeros((restarts, n), bool))
                        out[f"aux_{k}"][r, start : start + m] = np.asarray(v)[:m]
            if row.judge == "fixed":
                res = model.judges["fixed"](model.state, x_adv, y, rng.fixed_mask_key(key))
            else:
                res = model.judges[row.judge](model.state, x_adv, y, idx, judge_keys)
            res = jax.device_get(res)
            for k in ("correct", "top5") if "top5" in res else ("correct",):
                v = np.broadcast_to(np.asarray(res[k]), (draws, bs))
                out[k][r, :, start : start + m] = v[:, :m]
            if r == 0:
                out["pred_varies"][start : start + m] = np.asarray(res["pred_varies"])[:m]
                out["logits_vary"][start : start + m] = np.asarray(res["logits_vary"])[:m]
            if keep:  # gathers: every process runs them, in the same order
                advs[r, start : start + m] = model.host(x_adv)[:m]
            if row.bounded_eps is not None and r == 0:
                dist[start : start + m] = model.host(attacks.linf_distance(x, x_adv))[:m]
    if keep:
        out["adversarial"] = advs
    if row.bounded_eps is not None:  # a success counts only within the threat model's eps
        R = draws // 2
        found = ~protocol.majority(out["correct"][0, :R])  # misclassified, at any distance
        within = dist <= row.bounded_eps + 1e-6
        out["correct"][:, :, ~within] = True
        out["extra"] = {
            "unbounded_success_rate": round(float(found.mean()), 4),
            "median_linf_distance": float(np.median(dist[found])) if found.any() else None,
        }
    return out


def all_draws(row: Row, result: dict, model: EvaluatedClassifier, data, keys, batch_size: int):
    """A counted row's kept images judged on the N-evaluation's draws (`all_draws_keys`,
    docs/method.md §6.8): bool [restarts, max(N), n]. A deterministic model's draws are all
    alike: its first judging draw stands for each of them (no extra work)."""
    correct = result["correct"]
    if not model.randomized:
        return np.repeat(correct[:, :1], len(keys), axis=1)
    _, y_all, _ = data
    advs = result["adversarial"]  # every counted row keeps them (`run_row`)
    (restarts, n), bs = advs.shape[:2], global_batch(row.n, batch_size, model.mesh.size)
    keys = model.replicate(keys)
    out = np.zeros((restarts, len(keys), n), bool)
    for r in range(restarts):
        for _, start, m, x, y in _batches(advs[r], y_all, n, bs, model):
            idx = model.put(
                input_pipeline.pad_batch(np.arange(start, start + m, dtype=np.int32), bs)
            )
            res = jax.device_get(model.judges[row.judge](model.state, x, y, idx, keys))
            out[r, :, start : start + m] = np.broadcast_to(res["correct"], (len(keys), bs))[:, :m]
    return out


def _runtime_checks(model: EvaluatedClassifier, data, keys, batch_size: int) -> dict:
    """AutoAttack's runtime checks on the clean examples (one draw each): the fraction whose loss
    gradient through the white-box path is exactly zero, and the fraction whose logits look like
    probabilities (non-negative, at most 1, summing to 1: a softmax output weakens CE attacks)."""
    x_all, y_all, _ = data
    n = len(y_all)
    bs = global_batch(n, batch_size, model.mesh.size)
    zero, probs = np.zeros(n, bool), np.zeros(n, bool)
    for b, start, m, x, y in _batches(x_all, y_all, n, bs, model):
        k = model.replicate(jax.random.fold_in(keys["sanity"], b))
        zero[start : start + m] = np.asarray(model.grad_is_zero(model.state, x, y, k))[:m]
        probs[start : start + m] = np.asarray(model.look_like_probabilities(model.state, x, k))[:m]
    return {"zero_gradient": float(zero.mean()), "probability_logits": float(probs.mean())}


def _load_source(source_workdir: str, run_config, *, votes: int, top5: bool) -> EvaluatedClassifier:
    if not paths.isdir(source_workdir):
        raise ValueError(
            f"config.eval.transfer.source_workdir={source_workdir!r} is not a directory"
        )
    src = checkpoint.load(source_workdir)
    if src.config.dataset != run_config.dataset:
        raise ValueError(
            f"config.eval.transfer.source_workdir={source_workdir!r} holds a "
            f"{src.config.dataset!r} model; the evaluated model is trained on "
            f"{run_config.dataset!r}"
        )
    return EvaluatedClassifier(src, votes=votes, top5=top5)


def plan_rows(
    ev, groups: set[str], model: EvaluatedClassifier, source: EvaluatedClassifier | None, n_all: int
) -> Plan:
    """The rows of the selected kinds, in `rows.KINDS` order, and the kinds skipped and why."""
    plan = Plan(ev, model, source, n_all)
    for kind in KINDS:
        if kind.name not in groups:
            continue
        if kind.needs == "preprocessing" and not model.preprocessed:
            plan.skipped[kind.name] = model.lacks("preprocessing")
        elif kind.needs == "randomness" and not model.randomized:
            plan.skipped[kind.name] = model.lacks("randomness")
        elif kind.needs_source and source is None:
            plan.skipped[kind.name] = "no eval.transfer.source_workdir given"
        else:
            kind.build(plan, ev.get(kind.name))
    return plan


def run_plan(
    plan: Plan,
    model: EvaluatedClassifier,
    data,
    keys,
    *,
    batch_size: int,
    runtime_checks: bool,
    store=None,
    config=None,
) -> tuple[dict, dict, list[str], dict | None]:
    """Runs the plan's rows one after another, then AutoAttack's runtime checks.

    Args:
      plan: the rows (`plan_rows`).
      model: the evaluated classifier.
      data: (images float [n, H, W, C] in [0, 1], labels int32 [n], the 2R judging keys).
      keys: {"attack": the attacks' root key, "sanity": the runtime checks' root key, and,
        for the N-evaluation, "all_draws": its max(N) keys (`all_draws_keys`)}.
      batch_size: the global batch (divisible by the device count).
      runtime_checks: run AutoAttack's runtime checks (when any attack kind was asked for).
      store: finished rows to resume from and save to (`_Store`), or None: no resuming.
      config: read for `progress_bar` only.

    Returns:
      (per row `run_row`'s output with its `protocol.row_figures` as "figures" and, for a
      counted row under the N-evaluation, its `all_draws`; per row and
      "runtime_checks" its seconds, the rows resumed, the runtime checks or None when no attack
      row ran).
    """
    store = _NoStore() if store is None else store
    R = len(data[2]) // 2
    cache = {r.reuse: None for r in plan.rows if r.reuse}
    results, seconds = {}, {}
    finished = {r.name: store.load(r.name) for r in plan.rows}
    finished = {name: done for name, done in finished.items() if done is not None}
    finished = store.agree(finished, [r.name for r in plan.rows])
    resumed = list(finished)
    if resumed:
        print(f"resuming the evaluation: {len(resumed)} of {len(plan.rows)} rows already "
              f"finished ({', '.join(resumed)})", file=sys.stderr)  # fmt: skip
    bar = monitor.progress(total=len(plan.rows), desc="attacks", unit="row", config=config)
    for index, row in enumerate(plan.rows):
        done = finished.pop(row.name, None)
        t0 = time.time()
        if done is not None:
            results[row.name], seconds[row.name] = done
        else:
            results[row.name] = run_row(row, model, data, keys, cache, batch_size)
        save, have = done is None, results[row.name].get("all_draws")
        more = row.counted and "all_draws" in keys  # the N-evaluation (§6.8), unless finished
        if more and (have is None or have.shape[1] < len(keys["all_draws"])):
            results[row.name]["all_draws"] = all_draws(
                row, results[row.name], model, data, keys["all_draws"], batch_size
            )
            save = True
        if done is None:
            seconds[row.name] = round(time.time() - t0, 2)
        if save:
            store.save(row.name, results[row.name], seconds[row.name])
        if row.name in cache:
            cache[row.name] = results[row.name]["adversarial"]
        correct = results[row.name]["correct"]
        fig = protocol.row_figures(**protocol.split_draws(correct, R))
        results[row.name]["figures"] = fig
        bar.update(1)
        how = "resumed" if done is not None else f"{seconds[row.name]:.1f} s"
        bar.write(f"{row.name}: accuracy {fig['accuracy']:.4f} on {row.n} examples ({how})",
                  file=sys.stderr)  # fmt: skip
        if preemption.requested(index, every=1):  # rows are long: agree after each one
            bar.close()
            raise preemption.Preempted(
                f"preempted during the evaluation after row {row.name} ({index + 1} of "
                f"{len(plan.rows)} rows saved in eval_partial/); run the same command to resume"
            )
    bar.close()
    runtime = None
    if runtime_checks:
        t0 = time.time()
        runtime = _runtime_checks(model, data, keys, batch_size)
        seconds["runtime_checks"] = round(time.time() - t0, 2)

    return results, seconds, resumed, runtime


# ---------------------------------------------------------------------------------------------
# Resuming a killed evaluation


class _Store:
    """Finished rows in WORKDIR/eval_partial/, valid while the fingerprint matches.

    Process 0 alone writes; every process reads, and `agree` keeps the rows every process could
    read, so all of them run the same rows (the same sequence of collectives)."""

    def __init__(self, workdir: str, fingerprint: dict):
        self.dir = paths.join(workdir, "eval_partial")
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.writer = jax.process_index() == 0
        stamp = paths.join(self.dir, "fingerprint.txt")
        old = paths.read_text(stamp).strip() if paths.exists(stamp) else ""
        self.valid = old == self.digest
        cluster.barrier("eval_partial stamp read")  # every process read it before process 0 acts
        if paths.isdir(self.dir) and not self.valid and self.writer:
            print("note: the finished rows in eval_partial/ were made with other settings; "
                  "starting over", file=sys.stderr)  # fmt: skip
            paths.rmtree(self.dir)
        if self.writer:
            paths.makedirs(self.dir)
            paths.write_text(stamp, self.digest + "\n")

    def agree(self, finished: dict, names: list[str]) -> dict:
        """The finished rows (of `names`, the same list on every process) every process loaded."""
        if jax.process_count() == 1:
            return finished
        have = np.array([name in finished for name in names], np.int32)
        everywhere = np.asarray(multihost_utils.process_allgather(have)).min(axis=0)
        return {name: finished[name] for name, ok in zip(names, everywhere, strict=True) if ok}

    def _path(self, name: str) -> str:
        return paths.join(self.dir, f"{name}.npz")

    def load(self, name: str) -> tuple[dict, float] | None:
        """A finished row's results and seconds, or None (not finished, or unreadable)."""
        if not self.valid:
            return None
        try:
            z = paths.load_npz(self._path(name))
            out = {k: v for k, v in z.items() if k not in ("extra", "seconds")}
            out["extra"] = json.loads(str(z["extra"]))
            seconds = float(z["seconds"])
        except (OSError, ValueError, KeyError):  # FileNotFoundError is an OSError
            return None
        if not out["extra"]:
            out.pop("extra")
        return out, seconds

    def save(self, name: str, result: dict, seconds: float) -> None:
        if not self.writer:
            return
        arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
        extra = json.dumps(result.get("extra", {}))
        paths.save_npz(self._path(name), extra=np.array(extra), seconds=np.array(seconds), **arrays)

    def remove(self) -> None:
        if self.writer:
            paths.rmtree(self.dir)


class _NoStore:
    """No resuming: nothing finished, nothing saved (an evaluation of a user's function)."""

    def load(self, name: str) -> None:
        return None

    def agree(self, finished: dict, names: list[str]) -> dict:
        return finished

    def save(self, name: str, result: dict, seconds: float) -> None:
        pass

    def remove(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# The config in force

# The keys an evaluation takes from the caller's config whatever the run's: its own settings.
EVALUATION_KEYS = ("eval", "eval_batch_size", "progress_bar", "me.votes", "me.inference_p")


def _get(config: ml_collections.ConfigDict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _plain(value):
    """A value as config.json holds it (tuples as lists, sections as dicts), for comparing."""
    if isinstance(value, ml_collections.ConfigDict):
        return json.loads(value.to_json())
    return json.loads(json.dumps(value))


def config_in_force(
    config: ml_collections.ConfigDict,
    run: ml_collections.ConfigDict,
    overrides: Iterable[str] = (),
    *,
    source: str = "config.json",
) -> tuple[ml_collections.ConfigDict, dict]:
    """The config an evaluation runs with: the trained run's, with the caller's own settings.

    Args:
      config: the caller's config (the command line's): `EVALUATION_KEYS` come from it.
      run: the trained run's config (WORKDIR/config.json): every other key comes from it.
      overrides: the keys of `config` set on purpose (the command line's --config.KEY=VALUE).
        One of ME's inference options (`preprocess.inference_keys()`: me.method, me.channels, the
        solver's options) replaces the run's at inference; `data_dir` says where the dataset
        is read (except for an image folder, whose files define the dataset); any other key
        must equal the run's.
      source: where `run` was read, for the message.

    Returns:
      (the config in force, {"me.KEY": {"trained": run's, "evaluated": config's}} for each
      inference option that differs from the run's).

    Raises:
      ConfigError: a key of `overrides` that is neither the evaluation's own nor an inference
        option differs from the run's (the evaluation cannot apply it: the run is trained).
    """
    evaluated = copy.deepcopy(run)
    for key in EVALUATION_KEYS:
        *path, last = key.split(".")
        (_get(evaluated, ".".join(path)) if path else evaluated)[last] = copy.deepcopy(
            _get(config, key)
        )
    if config.me.inference_p is None:  # None: the run's inference p
        evaluated.me.inference_p = run.me.inference_p
    inference = [f"me.{k}" for k in preprocess.inference_keys()]
    changed = {}
    for key in sorted(set(overrides)):
        if any(key == k or key.startswith(k + ".") for k in EVALUATION_KEYS):
            continue
        given, trained = _get(config, key), _get(run, key)
        if _plain(given) == _plain(trained):
            continue
        if key == "data_dir" and run.dataset != input_pipeline.IMAGE_FOLDER:
            evaluated.data_dir = given  # where this machine keeps the run's dataset
            continue
        if key not in inference:
            own = ", ".join(k + ".*" if k == "eval" else k for k in EVALUATION_KEYS)
            raise ConfigError(
                f"config.{key}={given!r} differs from {key}={trained!r} in {source}, the run "
                "being evaluated, and cannot apply to a trained network: drop the override, or "
                f"train a run with it (an evaluation may change its own settings {own}, ME's "
                f"inference options {', '.join(inference)} and, but for an image folder, data_dir)"
            )
        evaluated.me[key.split(".")[1]] = given
        changed[key] = {"trained": _plain(trained), "evaluated": _plain(given)}
    return evaluated, changed


def _load_target(config, workdir: str, overrides: Iterable[str]):
    """(the classifier in force, its EvaluatedClassifier, the source EvaluatedClassifier or None,
    the ME options it is evaluated with otherwise than trained), after every check that needs no
    checkpoint."""
    ev = config.eval
    validate_eval(ev)
    groups = parse_attacks(ev.attacks)
    if config.eval_batch_size % jax.device_count():
        raise ConfigError(
            f"config.eval_batch_size={config.eval_batch_size} must be divisible by the number of "
            f"devices ({jax.device_count()}): the evaluation's batches are split over all of them"
        )
    if not paths.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} does not exist; train a model there first")
    source_path = paths.join(workdir, checkpoint.CONFIG_FILE)
    config, changed = config_in_force(
        config, checkpoint.read_config(workdir), overrides, source=source_path
    )
    preprocess.check_config(config)  # the run's method in the modes the evaluation asks for
    clf = checkpoint.load(workdir)
    clf = dataclasses.replace(
        clf, config=config, inference_p=defense.default_inference_p(config.me)
    )
    top5 = clf.num_classes > 10
    model = EvaluatedClassifier(clf, votes=int(config.me.votes), top5=top5, gradient=ev.gradient)
    source, source_dir = None, ev.transfer.source_workdir
    if "transfer" in groups and source_dir:
        source = _load_source(source_dir, config, votes=int(config.me.votes), top5=top5)
    return clf, model, source, groups, changed


# ---------------------------------------------------------------------------------------------
# The evaluation


@preemption.watch()
def evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, overrides: Iterable[str] = ()
) -> dict:
    """Runs the attack suite on WORKDIR's checkpoint; writes WORKDIR/results.json and results.md.

    Args:
      config: the evaluation config; `config.eval` gives the rows and budgets, `config.me.votes`
        the size of the majority vote, `config.me.inference_p` (unless None) overrides the run's
        inference p. Every other key comes from WORKDIR/config.json (`config_in_force`).
      workdir: a trained run's workdir.
      overrides: the keys of `config` set on purpose (the command line's --config.KEY=VALUE):
        ME's inference options among them replace the run's (results.json's
        `inference_overrides`); any other key that differs from the run's is refused.

    Returns:
      The report written to results.json.
    """
    t_start = time.time()
    clf, model, source, groups, changed = _load_target(config, workdir, overrides)
    config = run = clf.config  # the config in force: the run's, with the evaluation's settings
    ev, votes, top5 = config.eval, model.votes, clf.num_classes > 10
    source_dir = ev.transfer.source_workdir or None

    images, labels = input_pipeline.load_split(run.dataset, "test", data_dir=run.data_dir or None)
    n_all = len(labels) if ev.num_examples is None else min(int(ev.num_examples), len(labels))
    x_all = input_pipeline.to_float(images[:n_all])
    y_all = labels[:n_all].astype(np.int32)
    keys = {"attack": rng.stream(run.seed, rng.ATTACK), "sanity": rng.stream(run.seed, rng.SANITY)}
    if ev.n_eval:
        keys["all_draws"] = all_draws_keys(run.seed, max(ev.n_eval))
    data = (x_all, y_all, judging_keys(run.seed, int(ev.eval_keys)))

    plan = plan_rows(ev, groups, model, source, n_all)
    eval_settings, run_settings = json.loads(ev.to_json()), json.loads(run.to_json())
    eval_settings.pop("attacks")
    for d in (eval_settings, run_settings["eval"]):  # a finished row gets the N-evaluation's
        d.pop("n_eval")  # draws when it lacks them: n_eval changes none of its own results
    store = _Store(workdir, {
        "eval": eval_settings, "step": clf.step, "inference_p": clf.inference_p, "votes": votes,
        "run": run_settings, "eval_batch_size": config.eval_batch_size,
        "source": [source_dir, source.clf.step] if source else None, "n_all": n_all,
    })  # fmt: skip
    results, seconds, resumed, runtime = run_plan(
        plan, model, data, keys, batch_size=config.eval_batch_size,
        runtime_checks=bool(groups - {"clean"}), store=store, config=config,
    )  # fmt: skip
    R = int(ev.eval_keys)
    out = report.build(
        plan, results, seconds, runtime=runtime, top5=top5, num_classes=clf.num_classes, R=R
    )
    out.update(
        workdir=paths.abspath(workdir),
        step=int(clf.step),
        dataset=run.dataset,
        model=run.model,
        num_classes=clf.num_classes,
        me={"method": run.me.method, "inference_p": clf.inference_p, "votes": votes},
        inference_overrides=changed,
        source_workdir=source_dir or None,
        eval_keys=R,
        resumed_rows=resumed,
        devices={"count": jax.device_count(), "processes": jax.process_count(),
                 "kind": jax.devices()[0].device_kind},
    )  # fmt: skip
    out["budgets"]["total_seconds"] = round(time.time() - t_start, 2)
    arrays = out.pop("_arrays")
    if jax.process_index() == 0:
        report.write(out, arrays, workdir)
        pngs = plots.write_figures(out, workdir)
        plots.log_to_tensorboard(out, workdir, pngs)
        store.remove()
    print(f"evaluation done in {out['budgets']['total_seconds']:.0f} s", file=sys.stderr)
    return out
