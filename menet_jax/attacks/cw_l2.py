"""Carlini-Wagner L2 attack, untargeted, batched: Adam in tanh space, binary search on c.

Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
Per example it minimises, over w with image z = (tanh(w) + 1) / 2 (so z stays in [0, 1]),

    ||z - x0||_2^2 + c * max(z_y - max_{i != y} z_i + confidence, 0)

(z_i the logits, x0 the image x mapped to tanh space and back) with Adam from w0 = x0's,
for each of `binary_search_steps` constants c: c starts at `initial_const`, is multiplied by
10 until some iterate succeeds, then bisected between the largest failing and the smallest
succeeding c. The result is, per example, the successful iterate closest to x in L2 over all
constants, or x itself where none succeeded.

The schedule is foolbox 1.6.2's `CarliniWagnerL2Attack` (the version the ME-Net authors used;
foolbox 2.0's is the same), whose defaults are this function's: binary_search_steps=5,
max_iterations=1000, learning_rate=5e-3, initial_const=1e-2, abort_early=True, confidence=0
(the authors' transfer attack passed confidence=20 and max_iterations=1000). As there, Adam
restarts from w0 for each c and uses eps = 1e-7; with `abort_early` an example stops its
optimisation for the current c when, at an iteration i with i % ceil(steps / 10) == 0, its
loss is not below 0.9999 times its loss at the previous such check; from 10 binary-search steps
on, the last uses the smallest succeeding c (capped at 1e10). Each iteration judges the iterate
before its Adam update, so the image of the last update is never scored, as in foolbox.

What counts as a success: with `confident_only` (the default, Carlini and Wagner's reference),
an iterate that is misclassified with margin z_y - max_{i != y} z_i <= -confidence, for the
result and the binary search alike; so the result has margin about -confidence. foolbox
1.x/2.x judged iterates by its Misclassification criterion instead (`confident_only=False`):
the result is then the closest misclassified iterate, and confidence only steers the path.

Not bounded by any eps: score the result with `linf_distance` (or an L2 norm).

Keys: one model call per Adam iteration; iteration i of binary-search step s calls
`logits_fn(z, fold_in(fold_in(key, s), i))`, and that call's logits give both the gradient and
the success judgement.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from menet_jax.attacks.arguments import check_count, check_inputs, check_nonneg
from menet_jax.attacks.logits_fn import LogitsFn, merge_fn, split_fn
from menet_jax.attacks.losses import margin

__all__ = ["cw_l2"]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-7  # foolbox's AdamOptimizer writes 10e-8
_TANH_SHRINK = 0.999999  # keeps arctanh finite at pixels 0 and 1 (foolbox, Carlini's code)
_MAX_CONST = 1e10


class _Best(NamedTuple):
    """Per example: the closest successful iterate [B, H, W, C] and its squared L2 [B]."""

    image: jax.Array
    dist: jax.Array


class _Adam(NamedTuple):
    """One binary-search step's optimisation state, per example where [B]."""

    i: jax.Array  # iteration, scalar int32
    w: jax.Array  # tanh-space variable [B, H, W, C]
    m: jax.Array
    v: jax.Array
    active: jax.Array  # still optimising (not aborted) [B]
    checked_loss: jax.Array  # loss at the last abort check [B]
    succeeded: jax.Array  # some iterate succeeded with this constant [B]
    best: _Best


def _to_tanh_space(x):
    return jnp.arctanh((2 * x - 1) * _TANH_SHRINK)


def _to_image(w):
    return (jnp.tanh(w) + 1) / 2


def _sum_per_example(a):
    return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def _objective(logits_fn, y, x, x0, const, confidence, confident_only):
    """`(w, key) -> (sum of losses, (losses [B], success [B], image, squared L2 to x [B]))`."""

    def objective(w, key):
        z = _to_image(w)
        logits = logits_fn(z, key)
        m = margin(logits, y)
        losses = _sum_per_example((z - x0) ** 2) + const * jnp.maximum(m + confidence, 0.0)
        success = jnp.argmax(logits, axis=-1) != y
        if confident_only:
            success = success & (m <= -confidence)
        return jnp.sum(losses), (losses, success, z, _sum_per_example((z - x) ** 2))

    return objective


def _adam_step(state, grad, learning_rate):
    """foolbox's Adam update of w, m, v at iteration state.i (0-based), for every example."""
    b1, b2 = _ADAM_BETAS
    t = (state.i + 1).astype(jnp.float32)
    m = b1 * state.m + (1 - b1) * grad
    v = b2 * state.v + (1 - b2) * grad**2
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return state.w - learning_rate * m_hat / (jnp.sqrt(v_hat) + _ADAM_EPS), m, v


def _optimise(objective, w0, best, key, steps, learning_rate, *, abort_early):
    """Adam on one constant: up to `steps` iterations from w0, per-example early abort.

    Returns (succeeded [B], best): whether some iterate succeeded, and the closest successful
    iterates so far (`best` updated).
    """
    grad_fn = jax.grad(objective, has_aux=True)
    check_every = jnp.maximum((steps + 9) // 10, 1)  # ceil(steps / 10)
    batch = w0.shape[0]

    def cond(s):
        return (s.i < steps) & jnp.any(s.active)

    def body(s):
        grad, (losses, success, z, dist) = grad_fn(s.w, jax.random.fold_in(key, s.i))
        success = success & s.active
        closer = success & (dist < s.best.dist)
        best = _Best(
            jnp.where(closer[:, None, None, None], z, s.best.image),
            jnp.where(closer, dist, s.best.dist),
        )
        w, m, v = _adam_step(s, grad, learning_rate)
        keep = s.active[:, None, None, None]
        w, m, v = (jnp.where(keep, new, old) for new, old in ((w, s.w), (m, s.m), (v, s.v)))
        active, checked = s.active, s.checked_loss
        if abort_early:
            check = s.i % check_every == 0
            active = active & ~(check & ~(losses <= 0.9999 * checked))
            checked = jnp.where(check, losses, checked)
        return _Adam(s.i + 1, w, m, v, active, checked, s.succeeded | success, best)

    zeros = jnp.zeros_like(w0)
    init = _Adam(
        jnp.int32(0),
        w0,
        zeros,
        zeros,
        jnp.ones((batch,), bool),
        jnp.full((batch,), jnp.inf, jnp.float32),
        jnp.zeros((batch,), bool),
        best,
    )
    final = jax.lax.while_loop(cond, body, init)
    return final.succeeded, final.best


def _next_const(const, lower, upper, succeeded):
    """The binary search on c: (const, lower, upper) for the next step, per example."""
    upper = jnp.where(succeeded, const, upper)
    lower = jnp.where(succeeded, lower, const)
    const = jnp.where(jnp.isinf(upper), const * 10, (lower + upper) / 2)
    return const, lower, upper


@partial(jax.jit, static_argnames=("fn_static", "abort_early", "confident_only"))
def _cw_l2(
    fn_dynamic,
    x,
    y,
    key,
    confidence,
    steps,
    binary_search_steps,
    learning_rate,
    initial_const,
    *,
    fn_static,
    abort_early,
    confident_only,
):
    logits_fn = merge_fn(fn_dynamic, fn_static)
    batch = x.shape[0]
    w0 = _to_tanh_space(x)
    x0 = _to_image(w0)

    def search_step(s, carry):
        const, lower, upper, best = carry
        # From 10 steps on, the last one uses the smallest succeeding constant (foolbox).
        last = (s == binary_search_steps - 1) & (binary_search_steps >= 10)
        const = jnp.where(last, jnp.minimum(upper, _MAX_CONST), const)
        objective = _objective(logits_fn, y, x, x0, const, confidence, confident_only)
        succeeded, best = _optimise(
            objective,
            w0,
            best,
            jax.random.fold_in(key, s),
            steps,
            learning_rate,
            abort_early=abort_early,
        )
        return (*_next_const(const, lower, upper, succeeded), best)

    ones = jnp.ones((batch,), jnp.float32)
    init = (
        initial_const * ones,
        0 * ones,
        jnp.inf * ones,
        _Best(x, jnp.inf * ones),
    )
    *_, best = jax.lax.fori_loop(0, binary_search_steps, search_step, init)
    return jnp.where(jnp.isfinite(best.dist)[:, None, None, None], best.image, x)


def cw_l2(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    confidence: float = 0.0,
    steps: int = 1000,
    binary_search_steps: int = 5,
    learning_rate: float = 5e-3,
    initial_const: float = 1e-2,
    abort_early: bool = True,
    confident_only: bool = True,
) -> jax.Array:
    """Untargeted Carlini-Wagner L2 attack (Carlini and Wagner 2017), one jitted call.

    Adam on the tanh-space image minimises ||z - x||^2 + c * max(margin + confidence, 0) for
    each of `binary_search_steps` constants c, searched per example; the module docstring gives
    the schedule (foolbox 1.6.2's). `steps`, `binary_search_steps`, `confidence`,
    `learning_rate` and `initial_const` are traced (new values do not retrace).

    Args:
      logits_fn: pure, jittable `(x, key) -> logits [B, K]`, differentiable in x; see `pgd` for
        how it is passed to jit. Each Adam iteration calls it once with a fresh key.
      x: images [B, H, W, C] in [0, 1].
      y: integer labels [B].
      key: typed key (`jax.random.key`); see the module docstring for how it is split.
      confidence: the margin kappa to reach (>= 0); the authors' transfer attack used 20.
      steps: Adam iterations per constant (>= 0; foolbox's max_iterations).
      binary_search_steps: constants tried per example (>= 1).
      learning_rate: Adam's step size (> 0).
      initial_const: the first constant c (> 0).
      abort_early: stop an example's optimisation for a constant once its loss stalls.
      confident_only: an iterate succeeds only with margin <= -confidence (Carlini and
        Wagner); False: any misclassified iterate does (foolbox 1.x/2.x).

    Returns:
      Images float32 [B, H, W, C] in [0, 1]: per example the successful iterate of smallest L2
      distance to x, or x itself where no iterate succeeded. Not bounded in L-inf.
    """
    x, y = check_inputs(x, y, key)
    check_nonneg("confidence", confidence)
    steps = check_count("steps", steps, 0)
    binary_search_steps = check_count("binary_search_steps", binary_search_steps, 1)
    for name, value in (("learning_rate", learning_rate), ("initial_const", initial_const)):
        check_nonneg(name, value)
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}.")
    dynamic, static = split_fn(logits_fn)
    return _cw_l2(
        dynamic,
        x,
        y,
        key,
        jnp.float32(confidence),
        jnp.int32(steps),
        jnp.int32(binary_search_steps),
        jnp.float32(learning_rate),
        jnp.float32(initial_const),
        fn_static=static,
        abort_early=bool(abort_early),
        confident_only=bool(confident_only),
    )
