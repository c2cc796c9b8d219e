"""The attack suite: every attack of the paper as a row, run on a trained run's checkpoint.

`evaluate(config, workdir)` restores WORKDIR's classifier (model and ME from WORKDIR/config.json;
the budgets from `config.eval`, the vote size `config.me.votes`, an optional
`config.me.inference_p` override) and
runs the rows of the groups named in `config.eval.attacks` on prefixes of the run's test split.

Rows (threat model, what is attacked, how it is judged); "counted" rows make the headline:
  clean                      no attack (counted).
  fgsm, pgd_S, cw_kK,        white-box (Tables 11/13/16/19/22), gradients through ME by
  bpda_eot, apgd_ce,         `eval.gradient` (BPDA straight-through or exact); bpda_eot is Tramer
  apgd_dlr                   et al.'s adaptive attack (fresh masks averaged per step, best iterate
                             kept), apgd_* AutoAttack's APGD with EOT (all counted).
  pgd_long_S                 long PGD on a subset (diagnostic: convergence).
  network_only               Table 12: PGD on the bare network at one fixed reconstruction ME(x),
                             judged through a fresh ME (counted).
  graybox                    Tables 10/15/18/21: PGD on the bare network at x, judged through ME
                             (counted).
  transfer_*                 Tables 9/14/17/20: FGSM/PGD/CW-Linf and the authors' CW-L2 on
                             eval.source_workdir's model, applied to this model (diagnostics).
  spsa, boundary             score- and decision-based attacks on the randomised model; boundary
                             counts a success only within eps (diagnostics).
  vote_clean, vote_pgd_S     majority vote over k masks (supplement J), on clean and main-PGD
                             images (diagnostics).
  sweep_eps_xM, no_me_pgd,   sanity rows: PGD at M * eps; the same PGD on and judged by the bare
  fixed_mask_pgd             network; PGD (exact gradients) and judging with one fixed mask.

Judging (docs/method.md §6, `protocol`): 2R = 2 * eval.eval_keys draws shared by every row
(`judging_keys`); draw r masks example i with fold_in(rng.stream(seed, rng.JUDGE), r) folded with
i; draws 0..R-1 measure, R..2R-1 select. Every restart's images are judged. Attacks draw from
rng.named(rng.stream(seed, rng.ATTACK), row name), then the batch index (restart r > 0 folds in
r); no attack sees a judging key. The checks are `checks`, results.json/.md/.npz `report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.tree_util import Partial

from menet_jax import attacks, checkpoint, input_pipeline, monitor, rng
from menet_jax.evaluation import protocol, report
from menet_jax.evaluation.settings import ME_ONLY, parse_attacks, validate_eval


def _size(value: int, total: int) -> int:
    return total if value == -1 else min(int(value), total)


# ---------------------------------------------------------------------------------------------
# The model as jit-friendly functions (arrays travel as traced arguments, functions by identity)


class _Model:
    """Pure functions of one classifier, created once so jit caches stay warm across batches."""

    def __init__(self, clf, *, votes: int, top5: bool, gradient: str = "bpda"):
        self.clf, self.state, self.votes = clf, clf.state, votes
        self.uses_me = clf.config.me.method != "none"

        def bpda(state, x, key):
            return clf.apply(state, x, key, mode="menet", gradient="bpda")

        def network(state, x, key):
            return clf.apply(state, x, key, mode="network")

        def at_rec(state, rec, x0, z, key):  # network-only: ME(x) fixed, delta on top
            return clf.apply(state, rec + (z - x0), key, mode="network")

        def vote(state, x, key):
            return clf.apply(state, x, key, mode="vote", votes=votes)

        # What white-box attacks differentiate: BPDA or exact gradients through ME. SPSA and
        # Boundary use only its values, which are the same.
        self.whitebox = clf.logits_fn("menet", gradient=gradient)
        self.gradient = gradient
        self.network = clf.logits_fn("network")
        self._at_rec = at_rec
        self.preprocess = jax.jit(lambda x, k: clf.preprocess(x, k))

        def score(logits, y):
            out = {"correct": jnp.argmax(logits, -1) == y[None]}
            if top5:
                out["top5"] = jnp.any(jax.lax.top_k(logits, 5)[1] == y[None, :, None], -1)
            out["pred_varies"] = jnp.any(jnp.argmax(logits, -1) != jnp.argmax(logits[0], -1), 0)
            out["logits_vary"] = jnp.any(logits != logits[:1], axis=(0, 2))
            return out

        def per_example(fn):
            def draws(state, x, y, idx, keys):
                def one(k):
                    ks = jax.vmap(lambda i: jax.random.fold_in(k, i))(idx)
                    return jax.vmap(lambda xi, ki: fn(state, xi[None], ki)[0])(x, ks)

                return score(jax.lax.map(one, keys), y)

            return jax.jit(draws)

        self.judges = {
            "defended": per_example(bpda),
            "vote": per_example(vote),
            "network": jax.jit(lambda s, x, y, idx, keys: score(network(s, x, None)[None], y)),
            "fixed": jax.jit(lambda s, x, y, k: score(bpda(s, x, k)[None], y)),
        }

        def grad_is_zero(state, x, y, key):
            def loss(z):
                return jnp.sum(attacks.cross_entropy(bpda(state, z, key), y))

            g = jax.grad(loss)(x)
            return jnp.all(g.reshape(g.shape[0], -1) == 0, axis=-1)

        self.grad_is_zero = jax.jit(grad_is_zero)

    def at_rec(self, rec, x):
        return Partial(self._at_rec, self.state, rec, x)

    def fixed(self, mask_key):
        return self.clf.logits_fn("fixed_mask", mask_key=mask_key, gradient="exact")


# ---------------------------------------------------------------------------------------------
# Rows


@dataclasses.dataclass
class Row:
    name: str
    group: str
    threat: str
    n: int
    params: dict
    make: Callable | None = None  # (x, y, key) -> x_adv for one padded batch
    reuse: str | None = None  # take x_adv from this earlier row
    judge: str = "defended"
    counted: bool = True  # in the headline (white-box / gray-box at the main eps)
    bounded_eps: float | None = None  # boundary: success only within this L-inf distance
    restarts: int = 1  # independent runs; every one is judged, the worst counts per example


def _plan(ev, groups, model: _Model, source: _Model | None, n_all: int):
    """The rows to run, in order, and the rows skipped with their reasons."""
    eps, step, main = float(ev.eps), float(ev.step_size), max(ev.pgd_steps)
    main_pgd = f"pgd_{main}"
    rows, skipped = [], {}
    bpda = f"white-box {model.gradient.upper()}" if model.uses_me else "white-box"

    def add(row):
        if row.n <= 0:
            skipped[row.name] = "its eval.*_examples is 0"
        else:
            rows.append(row)

    def pgd_row(name, group, threat, n, fn, *, steps=main, e=eps, size=step, **kw):
        """A PGD row; `fn` is a logits_fn or (x, key) -> logits_fn built per batch."""
        opts = {"eps": e, "steps": steps, "step_size": size, **kw}
        build = fn if isinstance(fn, _PerBatch) else (lambda x, k: fn)
        judge_kw = {k: kw.pop(k) for k in ("judge", "counted") if k in kw}
        opts = {k: v for k, v in opts.items() if k not in ("judge", "counted")}

        def make(x, y, k):
            return attacks.pgd(build(x, k), x, y, k, **opts)

        params = {k: v for k, v in opts.items() if k != "keep_best" or v}
        params["restarts"] = int(ev.restarts)
        add(Row(name, group, threat, n, params, make=make, restarts=int(ev.restarts), **judge_kw))

    rows.append(Row("clean", "clean", "none", n_all, {}, make=lambda x, y, k: x))
    if "fgsm" in groups:
        fgsm = lambda x, y, k: attacks.fgsm(model.whitebox, x, y, k, eps=eps)  # noqa: E731
        add(Row("fgsm", "fgsm", bpda, n_all, {"eps": eps}, make=fgsm))
    if "pgd" in groups:
        for s in ev.pgd_steps:
            pgd_row(f"pgd_{s}", "pgd", bpda, n_all, model.whitebox, steps=s)
        n_long = _size(ev.long_pgd_examples, n_all)
        s = ev.long_pgd_steps
        pgd_row(f"pgd_long_{s}", "pgd", bpda, n_long, model.whitebox, steps=s, counted=False)
    if "cw" in groups:
        for kappa in ev.cw_kappas:
            n_cw = _size(ev.cw_examples, n_all)
            kw = {"loss": "cw", "kappa": float(kappa)}
            pgd_row(f"cw_k{kappa:g}", "cw", bpda, n_cw, model.whitebox, **kw)
    if not model.uses_me:
        for g in sorted(groups & set(ME_ONLY)):
            skipped[g] = "ME-only row; the model has no ME (me.method=none)"
        groups = groups - set(ME_ONLY)
    if "eot" in groups:
        s = ev.eot_steps
        size = 5 * eps / s if ev.eot_step_size == -1 else float(ev.eot_step_size)
        n_eot = _size(ev.eot_examples, n_all)
        threat = f"{bpda}+EOT"
        kw = {"steps": s, "size": size, "eot_samples": ev.eot_samples, "keep_best": True}
        pgd_row("bpda_eot", "eot", threat, n_eot, model.whitebox, **kw)
    if "apgd" in groups:
        samples = int(ev.apgd_eot_samples) if model.uses_me else 1  # EOT needs randomness
        n_apgd = _size(ev.apgd_examples, n_all)
        for loss in ev.apgd_losses:
            opts = {"eps": eps, "steps": int(ev.apgd_steps), "loss": loss, "eot_samples": samples}

            def apgd(x, y, k, opts=opts):
                return attacks.apgd(model.whitebox, x, y, k, **opts)

            threat = f"{bpda} APGD-{loss.upper().replace('_TARGETED', '-T')}" + (
                "+EOT" if samples > 1 else ""
            )
            params = {**opts, "restarts": int(ev.restarts)}
            add(Row(f"apgd_{loss}", "apgd", threat, n_apgd, params, make=apgd,
                    restarts=int(ev.restarts)))  # fmt: skip
    if "network_only" in groups:

        def at_rec(x, k):
            return model.at_rec(model.preprocess(x, rng.fixed_mask_key(k)), x)

        threat = "network-only (fixed ME(x))"
        pgd_row("network_only", "network_only", threat, n_all, _PerBatch(at_rec))
    if "graybox" in groups:
        pgd_row("graybox", "graybox", "gray-box (bare network)", n_all, model.network)
    if "transfer" in groups and source is None:
        skipped["transfer"] = "no eval.source_workdir given"
    elif "transfer" in groups:
        via = "through its ME with BPDA" if source.uses_me else "vanilla"
        threat = f"transfer ({via})"
        fgsm = lambda x, y, k: attacks.fgsm(source.whitebox, x, y, k, eps=eps)  # noqa: E731
        add(Row("transfer_fgsm", "transfer", threat, n_all, {"eps": eps}, make=fgsm, counted=False))
        pgd_row(f"transfer_pgd_{main}", "transfer", threat, n_all, source.whitebox, counted=False)
        for kappa in list(ev.cw_kappas)[:1]:
            kw = {"loss": "cw", "kappa": float(kappa), "counted": False}
            pgd_row(f"transfer_cw_k{kappa:g}", "transfer", threat, n_all, source.whitebox, **kw)
        # The authors' transfer CW: foolbox CW-L2 at confidence 20, unbounded in L-inf, where any
        # misclassified iterate counts as found (confident_only=False, as foolbox 1.6.2 did).
        cw_l2_opts = {
            "confidence": float(ev.cw_l2_confidence),
            "steps": int(ev.cw_l2_steps),
            "confident_only": False,
        }

        def cw_l2(x, y, k):
            return attacks.cw_l2(source.whitebox, x, y, k, **cw_l2_opts)

        name = f"transfer_cw_l2_c{ev.cw_l2_confidence:g}"
        threat = f"transfer ({via}), CW-L2 unbounded (the authors' transfer CW)"
        params = {"eps": None, **cw_l2_opts}  # eps None: unbounded (an L2 attack)
        add(Row(name, "transfer", threat, n_all, params, make=cw_l2, counted=False))
    if "spsa" in groups:
        samples = int(ev.spsa_samples)
        spsa_kw = {
            "eps": eps,
            "steps": ev.spsa_steps,
            "samples": samples,
            "learning_rate": float(ev.spsa_learning_rate),
            "delta": float(ev.spsa_delta),
        }

        def spsa(x, y, k):
            return attacks.spsa(
                model.whitebox, x, y, k, **spsa_kw, batch_samples=math.gcd(samples, 128)
            )

        n_spsa = _size(ev.spsa_examples, n_all)
        add(Row("spsa", "spsa", "score-based", n_spsa, spsa_kw, make=spsa, counted=False))
    if "boundary" in groups:

        def boundary(x, y, k):
            return attacks.boundary(
                model.whitebox, x, y, k, steps=ev.boundary_steps, proposals=ev.boundary_proposals
            )

        params = {"eps": eps, "steps": ev.boundary_steps, "proposals": ev.boundary_proposals}
        n_b = _size(ev.boundary_examples, n_all)
        add(
            Row(
                "boundary",
                "boundary",
                "decision-based",
                n_b,
                params,
                make=boundary,
                bounded_eps=eps,
                counted=False,
            )
        )
    names = {r.name for r in rows}
    if "vote" in groups:
        n_vote, p = _size(ev.vote_examples, n_all), {"votes": model.votes}
        clean_p = {"eps": 0.0, **p}
        kw = {"judge": "vote", "counted": False}
        add(
            Row(
                "vote_clean", "vote", "majority vote", n_vote, clean_p, make=lambda x, y, k: x, **kw
            )
        )
        if main_pgd in names:
            params = {"eps": eps, "steps": main, "step_size": step, "restarts": ev.restarts, **p}
            threat = "majority vote (main PGD images)"
            add(Row(f"vote_{main_pgd}", "vote", threat, n_vote, params, reuse=main_pgd, **kw))
    if "sanity" in groups:
        n_sweep = _size(ev.sweep_examples, n_all)
        for m in map(float, ev.eps_multipliers):
            name = f"sweep_eps_x{m:g}"
            if m == 1 and main_pgd in names:
                params = {"eps": eps, "steps": main, "step_size": step, "restarts": ev.restarts}
                add(Row(name, "sanity", bpda, n_sweep, params, reuse=main_pgd, counted=False))
            else:
                pgd_row(name, "sanity", bpda, n_sweep, model.whitebox, e=eps * m, size=step * m,
                        counted=False)  # fmt: skip
        if not model.uses_me:
            skipped["no_me_pgd"] = skipped["fixed_mask_pgd"] = "the model has no ME"
        elif "graybox" in names:
            params = {"eps": eps, "steps": main, "step_size": step, "restarts": ev.restarts}
            threat = "no ME (bare network)"
            add(Row("no_me_pgd", "sanity", threat, n_all, params, reuse="graybox", judge="network",
                    counted=False))  # fmt: skip
        else:
            pgd_row("no_me_pgd", "sanity", "no ME (bare network)", n_sweep, model.network,
                    judge="network", counted=False)  # fmt: skip
        if model.uses_me:
            fixed = _PerBatch(lambda x, k: model.fixed(rng.fixed_mask_key(k)))
            pgd_row("fixed_mask_pgd", "sanity", "one fixed mask", n_sweep, fixed, judge="fixed",
                    counted=False)  # fmt: skip
    return rows, skipped, main_pgd


class _PerBatch:
    """Marks a `(x, key) -> logits_fn` builder (a logits_fn that depends on the batch)."""

    def __init__(self, build):
        self.build = build

    def __call__(self, x, key):
        return self.build(x, key)


# ---------------------------------------------------------------------------------------------
# Running


def judging_keys(seed: int, draws: int) -> jax.Array:
    """The 2R judging keys: draws 0..R-1 measure, R..2R-1 select (docs/method.md §6.2)."""
    root = rng.stream(seed, rng.JUDGE)
    return jax.vmap(lambda r: jax.random.fold_in(root, r))(jnp.arange(2 * draws, dtype=jnp.uint32))


def _run_row(row: Row, model: _Model, data, keys, cache: dict, batch_size: int) -> dict:
    """Attacks and judges one row: `correct` / `top5` bool [restarts, 2R, n] (the first R
    draws measure, the last R select), plus per-example randomness flags of restart 0."""
    x_all, y_all, judge_keys = data
    n, bs = row.n, min(batch_size, row.n)
    row_key = rng.named(keys["attack"], row.name)
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
    for b, start in enumerate(range(0, n, bs)):
        m = min(bs, n - start)
        x = jnp.asarray(input_pipeline.pad_batch(x_all[start : start + m], bs))
        y = jnp.asarray(input_pipeline.pad_batch(y_all[start : start + m], bs))
        idx = jnp.asarray(input_pipeline.pad_batch(np.arange(start, start + m, dtype=np.int32), bs))
        key = jax.random.fold_in(row_key, b)
        for r in range(restarts):
            if row.reuse is not None:
                x_adv = jnp.asarray(input_pipeline.pad_batch(cache[row.reuse][r, start:][:m], bs))
            else:  # restart 0 keeps the batch key, so one-restart rows draw as before
                x_adv = row.make(x, y, key if r == 0 else jax.random.fold_in(key, r))
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
            if keep:
                advs[r, start : start + m] = np.asarray(x_adv)[:m]
            if row.bounded_eps is not None and r == 0:
                dist[start : start + m] = np.asarray(attacks.linf_distance(x, x_adv))[:m]
    if row.name in cache:
        cache[row.name] = advs
    if row.counted:
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


def _zero_gradient(model: _Model, data, keys, batch_size: int) -> float:
    x_all, y_all, _ = data
    n, bs = len(y_all), min(batch_size, len(y_all))
    zero = np.zeros(n, bool)
    for b, start in enumerate(range(0, n, bs)):
        m = min(bs, n - start)
        x = jnp.asarray(input_pipeline.pad_batch(x_all[start : start + m], bs))
        y = jnp.asarray(input_pipeline.pad_batch(y_all[start : start + m], bs))
        k = jax.random.fold_in(keys["sanity"], b)
        zero[start : start + m] = np.asarray(model.grad_is_zero(model.state, x, y, k))[:m]
    return float(zero.mean())


def _load_source(source_workdir: str, run_config, *, votes: int, top5: bool) -> _Model:
    if not os.path.isdir(source_workdir):
        raise ValueError(f"config.eval.source_workdir={source_workdir!r} is not a directory")
    src = checkpoint.load(source_workdir)
    if src.config.dataset != run_config.dataset:
        raise ValueError(
            f"config.eval.source_workdir={source_workdir!r} holds a {src.config.dataset!r} model; "
            f"the evaluated model is trained on {run_config.dataset!r}"
        )
    return _Model(src, votes=votes, top5=top5)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the attack suite on WORKDIR's checkpoint; writes WORKDIR/results.json and results.md.

    Args:
      config: the evaluation config; `config.eval` gives the rows and budgets, `config.me.votes`
        the size of the majority vote, `config.me.inference_p` (unless None) overrides the run's
        inference p.
      workdir: a trained run's workdir.

    Returns:
      The report written to results.json.
    """
    t_start = time.time()
    ev = config.eval
    groups = parse_attacks(ev.attacks)
    validate_eval(ev)
    if not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} does not exist; train a model there first")
    clf = checkpoint.load(workdir)
    run = clf.config
    if config.me.inference_p is not None:
        clf = dataclasses.replace(clf, inference_p=float(config.me.inference_p))
    votes = int(config.me.votes)
    top5 = clf.num_classes > 10
    model = _Model(clf, votes=votes, top5=top5, gradient=ev.gradient)
    source = None
    if "transfer" in groups and ev.source_workdir:
        source = _load_source(ev.source_workdir, run, votes=votes, top5=top5)

    images, labels = input_pipeline.load_split(run.dataset, "test", data_dir=run.data_dir or None)
    n_all = _size(ev.num_examples, len(labels))
    x_all = input_pipeline.to_float(images[:n_all])
    y_all = labels[:n_all].astype(np.int32)
    keys = {"attack": rng.stream(run.seed, rng.ATTACK), "sanity": rng.stream(run.seed, rng.SANITY)}
    data = (x_all, y_all, judging_keys(run.seed, int(ev.eval_keys)))

    rows, skipped, main_pgd = _plan(ev, groups, model, source, n_all)
    cache = {r.reuse: None for r in rows if r.reuse}
    results, seconds = {}, {}
    bar = monitor.progress(total=len(rows), desc="attacks", unit="row", config=config)
    for row in rows:
        t0 = time.time()
        results[row.name] = _run_row(row, model, data, keys, cache, config.eval_batch_size)
        seconds[row.name] = round(time.time() - t0, 2)
        R = int(ev.eval_keys)
        acc = protocol.row_figures(
            list(results[row.name]["correct"][:, R:]), list(results[row.name]["correct"][:, :R])
        )["accuracy"]
        bar.update(1)
        line = f"{row.name}: accuracy {acc:.4f} on {row.n} examples ({seconds[row.name]:.1f} s)"
        bar.write(line, file=sys.stderr)
    bar.close()
    zero_grad = None
    if "sanity" in groups:
        t0 = time.time()
        zero_grad = _zero_gradient(model, data, keys, config.eval_batch_size)
        seconds["zero_gradient"] = round(time.time() - t0, 2)

    results_report = report.build(
        rows,
        results,
        seconds,
        skipped,
        main_pgd=main_pgd,
        model=model,
        ev=ev,
        zero_grad=zero_grad,
        n_all=n_all,
        top5=top5,
    )
    results_report.update(
        workdir=os.path.abspath(workdir),
        step=int(clf.step),
        dataset=run.dataset,
        model=run.model,
        me={"method": run.me.method, "inference_p": clf.inference_p, "votes": votes},
        source_workdir=ev.source_workdir or None,
        eval_keys=int(ev.eval_keys),
    )
    results_report["budgets"]["total_seconds"] = round(time.time() - t_start, 2)
    if jax.process_index() == 0:
        arrays = results_report.pop("_arrays")
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results_report, f, indent=2)
        np.savez_compressed(os.path.join(workdir, "results.npz"), **arrays)
        report.write_markdown(results_report, os.path.join(workdir, "results.md"))
    else:
        results_report.pop("_arrays")
    print(f"evaluation done in {results_report['budgets']['total_seconds']:.0f} s", file=sys.stderr)
    return results_report
