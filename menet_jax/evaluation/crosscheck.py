"""An independent adaptive attack against a finished evaluation: does it lower the headline?

  menet-jax crosscheck --workdir=DIR [--steps=50 --eot=8]
  python -m menet_jax.evaluation.crosscheck --workdir=DIR      (the same)

The headline is only as good as its strongest row. This module attacks the headline's examples
with an attack written apart from `menet_jax.attacks` (momentum on L1-normalised gradients,
sign steps with a cosine-decaying size, the iterate of highest mean loss kept; Dong et al. 2018
with EOT), with each of the losses cross-entropy and margin and each gradient rule, judges every
variant on the evaluation's own judging draws (R measure + R select, `suite.judging_keys`), adds
the variants to the counted rows stored in WORKDIR/results.npz and recomputes the headline with
the same estimator (`protocol.headline`). It prints both headlines, the drop in points and which
variants moved examples, and writes WORKDIR/crosscheck.json and the variants' judging draws to
WORKDIR/crosscheck.npz; run again with the same attack after a re-evaluation, it reuses them. A
drop of more than a few points means the suite's rows miss an attack the model is weak to.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax import attacks, checkpoint, cli, input_pipeline, paths, rng
from menet_jax.evaluation import protocol, report, suite
from menet_jax.evaluation.rows import Row
from menet_jax.evaluation.target import EvaluatedClassifier


def momentum_attack(logits_fn, x, y, key, *, eps, steps, eot, loss):
    """L-inf attack: EOT-averaged gradient, momentum 0.9 on L1-normalised gradients, sign steps
    of size eps/4 * (1 + cos(pi t / steps)) / 2, random start; keeps per example the iterate of
    highest EOT-mean loss (the last iterate is scored with fresh keys)."""

    def losses(z, k):
        logits = logits_fn(z, k)
        if loss == "ce":
            return attacks.cross_entropy(logits, y)
        return -attacks.margin(logits, y)

    def mean_loss_and_grad(z, k):
        def one(kk):
            def total(zz):
                per_example = losses(zz, kk)
                return jnp.sum(per_example), per_example

            (_, per_example), grad = jax.value_and_grad(total, has_aux=True)(z)
            return per_example, grad

        vals, grads = jax.lax.map(one, jax.random.split(k, eot))
        return jnp.mean(vals, 0), jnp.mean(grads, 0)

    k0, k_loop = jax.random.split(key)
    z0 = jnp.clip(x + jax.random.uniform(k0, x.shape, jnp.float32, -eps, eps), 0, 1)

    def step(t, carry):
        z, g, best, best_loss = carry
        val, grad = mean_loss_and_grad(z, jax.random.fold_in(k_loop, t))
        better = val > best_loss
        best = jnp.where(better[:, None, None, None], z, best)
        best_loss = jnp.where(better, val, best_loss)
        norm = jnp.sum(jnp.abs(grad), axis=(1, 2, 3), keepdims=True) + 1e-12
        g = 0.9 * g + grad / norm
        size = eps / 4 * (1 + jnp.cos(jnp.pi * t / steps)) / 2
        z = jnp.clip(jnp.clip(z + size * jnp.sign(g), x - eps, x + eps), 0, 1)
        return z, g, best, best_loss

    init = (z0, jnp.zeros_like(x), z0, jnp.full((x.shape[0],), -jnp.inf))
    z, _, best, best_loss = jax.lax.fori_loop(0, steps, step, init)
    val, _ = mean_loss_and_grad(z, jax.random.fold_in(k_loop, steps))
    return jnp.where((val > best_loss)[:, None, None, None], z, best)


def run(workdir: str, *, steps: int, eot: int, batch_size: int, gradients=("bpda",)) -> dict:
    """Runs the cross-check on WORKDIR (after `--mode=eval`); returns what it writes."""
    report_path = paths.join(workdir, "results.json")
    if not paths.exists(report_path):
        raise FileNotFoundError(f"{report_path} does not exist; run --mode=eval first")
    results = json.loads(paths.read_text(report_path))
    if results.get("schema_version") not in (2, 3, 4, report.RESULTS_SCHEMA_VERSION):
        raise ValueError(f"{report_path} is from another results schema; re-run --mode=eval")
    stored = paths.load_npz(paths.join(workdir, "results.npz"))
    head, R = results["headline"], int(results["eval_keys"])
    n = head["n"]
    eps = next(float(a["params"]["eps"]) for a in results["attacks"].values() if a["in_headline"])
    clf = checkpoint.load(workdir)
    evaluated = copy.deepcopy(clf.config)  # the ME the evaluation ran, not only the trained one
    for key, values in results.get("inference_overrides", {}).items():
        evaluated.me[key.split(".", 1)[1]] = values["evaluated"]
    clf = dataclasses.replace(clf, config=evaluated, inference_p=results["me"]["inference_p"])
    run_config = clf.config
    images, labels = input_pipeline.load_split(
        run_config.dataset, "test", data_dir=run_config.data_dir
    )
    x_all, y_all = input_pipeline.to_float(images[:n]), labels[:n].astype(np.int32)
    model = EvaluatedClassifier(clf, votes=int(clf.config.me.votes), top5=False)
    keys = suite.judging_keys(clf.config.seed, R)
    rows = {
        name: protocol.split_draws(stored[f"draws/{name}"][:, :, :n], R) for name in head["rows"]
    }
    before = protocol.headline(rows)
    attack_stream = rng.stream(clf.config.seed, rng.CROSSCHECK)
    params = {"steps": steps, "eot": eot, "eps": eps, "gradients": list(gradients)}
    # What the variants' draws depend on: the attack, the examples and draws, the ME evaluated
    # and the network's weights.
    signature = {**params, "n": n, "eval_keys": R, "seed": int(clf.config.seed),
                 "batch_size": batch_size, "me": results["me"],
                 "weights": _digest(clf.state)}  # fmt: skip
    extra, seconds = _stored(workdir, signature, R), {}
    for gradient in gradients if not extra else ():
        logits_fn = model.clf.logits_fn("menet", gradient=gradient)  # ME per device
        for loss in ("ce", "margin"):
            name = f"crosscheck_{loss}_{gradient}"
            attack = jax.jit(
                lambda x, y, k, fn=logits_fn, loss=loss: momentum_attack(
                    fn, x, y, k, eps=eps, steps=steps, eot=eot, loss=loss
                )
            )
            t0 = time.time()
            row = Row(name, "crosscheck", "independent", n, {}, make=attack)
            data, streams = (x_all, y_all, keys), {"attack": attack_stream}
            correct = suite.run_row(row, model, data, streams, {}, batch_size)["correct"][0]
            seconds[name] = round(time.time() - t0, 1)
            extra[name] = {"selection": [correct[R:]], "measurement": [correct[:R]]}
            rate = protocol.rates(correct[:R]).mean()
            print(f"{name}: accuracy {rate:.4f} on {n} examples", file=sys.stderr)
    if seconds:  # attacked now: keep the draws (bool [1, 2R, n], as results.npz's) for a rerun
        draws = {f"draws/{k}": np.concatenate([*v["measurement"], *v["selection"]])[None]
                 for k, v in extra.items()}  # fmt: skip
        paths.save_npz(_npz(workdir), attack=json.dumps(signature, sort_keys=True), **draws)
    after = protocol.headline({**rows, **extra})
    decided = {k: after["decided_by"].count(k) for k in sorted(set(after["decided_by"]))}
    out = {
        "headline_before": before["accuracy"],
        "headline_after": after["accuracy"],
        "drop_points": round(100 * (before["accuracy"] - after["accuracy"]), 2),
        "n": n,
        "eval_keys": R,
        "attack": params,
        "reused": not seconds,
        "rows": {
            k: round(float(protocol.rates(v["measurement"][0]).mean()), 4) for k, v in extra.items()
        },
        "decided_by_after": decided,
        "seconds": seconds,
    }
    paths.write_text(paths.join(workdir, "crosscheck.json"), json.dumps(out, indent=2))
    return out


def _digest(state) -> str:
    """A digest of the network's weights and statistics: the stored variants belong to them."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


def _npz(workdir: str) -> str:
    return paths.join(workdir, "crosscheck.npz")


def _stored(workdir: str, signature: dict, R: int) -> dict:
    """The variants' judging draws from an earlier cross-check of WORKDIR with the same attack,
    examples and draws (crosscheck.npz), as {name: {"selection", "measurement"}}; {} if none.

    The attack and its draws do not depend on the evaluation's rows, so after a re-evaluation
    (other budgets, more rows) the headline is recomputed against the stored variants."""
    if not paths.exists(_npz(workdir)):
        return {}
    stored = paths.load_npz(_npz(workdir))
    if str(stored["attack"]) != json.dumps(signature, sort_keys=True):
        return {}
    print(f"reusing the cross-check's variants stored in {_npz(workdir)}", file=sys.stderr)
    return {
        k.split("/", 1)[1]: protocol.split_draws(v, R) for k, v in stored.items() if k != "attack"
    }


def _options() -> cli.Options:
    return (
        cli.Options("menet-jax crosscheck", __doc__)
        .define("string", "workdir", None, "the evaluated run's workdir (results.npz)")
        .define("integer", "steps", 50, "attack steps")
        .define("integer", "eot", 8, "masks averaged per gradient (EOT)")
        .define("integer", "batch_size", 100, "images per batch")
        .define("string", "gradients", "bpda,exact", "comma-separated gradient rules")
    )


def main(argv: list[str]) -> int:
    try:
        args = _options().parse(argv)
        if not args.workdir:
            raise cli.UsageError("--workdir is required (the evaluated run's workdir).")
    except cli.UsageError as e:
        cli.fail(str(e))
        return 2  # a usage error (exit 2, as every entry point's)
    try:
        out = run(
            args.workdir,
            steps=args.steps,
            eot=args.eot,
            batch_size=args.batch_size,
            gradients=tuple(args.gradients.split(",")),
        )
    except (ValueError, FileNotFoundError) as e:
        return cli.fail(str(e))
    print(
        f"headline {out['headline_before']:.4f} -> {out['headline_after']:.4f} with the "
        f"independent attack ({out['drop_points']:+.2f} points down) on {out['n']} examples"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
