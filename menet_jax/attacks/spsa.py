"""SPSA: a score-based (gradient-free) L-inf attack (Uesato et al., ICML 2018).

Uesato, O'Donoghue, van den Oord and Kohli, "Adversarial Risk and the Dangers of Evaluating
Against Weak Attacks", ICML 2018; the update follows cleverhans' SPSA (random start in the
ball, margin loss on logits, antithetic Rademacher perturbations, Adam, projection each step).

Keys: k_start, k_loop = split(key); step t uses k_t = fold_in(k_loop, t), and chunk c of its
samples k_tc = fold_in(k_t, c), split into (perturbation key, model key).
"""

from functools import partial

import jax
import jax.numpy as jnp

from menet_jax.attacks.arguments import check_count, check_inputs, check_nonneg
from menet_jax.attacks.linf import project_linf, start_point
from menet_jax.attacks.logits_fn import LogitsFn, merge_fn, split_fn
from menet_jax.attacks.losses import margin

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


@partial(jax.jit, static_argnames=("fn_static", "samples", "batch_samples", "random_start"))
def _spsa(
    fn_dynamic,
    x,
    y,
    key,
    eps,
    steps,
    learning_rate,
    delta,
    *,
    fn_static,
    samples,
    batch_samples,
    random_start,
):
    logits_fn = merge_fn(fn_dynamic, fn_static)
    half = batch_samples // 2
    chunks = samples // batch_samples
    y_tiled = jnp.tile(y, batch_samples)

    def grad_estimate(z, step_key):
        # d(margin)/dz ~ mean_s margin(z + delta*u_s) * u_s / delta over antithetic u_s = +-1.
        def chunk(c, acc):
            k_noise, k_model = jax.random.split(jax.random.fold_in(step_key, c))
            u = jax.random.rademacher(k_noise, (half, *z.shape), jnp.float32)
            u = jnp.concatenate([u, -u])
            probes = jnp.clip(z[None] + delta * u, 0.0, 1.0).reshape(-1, *z.shape[1:])
            values = margin(logits_fn(probes, k_model), y_tiled).reshape(batch_samples, -1)
            return acc + jnp.einsum("sb,sb...->b...", values, u)

        total = jax.lax.fori_loop(0, chunks, chunk, jnp.zeros_like(z))
        return total / (samples * delta)

    k_start, k_loop = jax.random.split(key)
    z0 = start_point(k_start, x, eps, random_start=random_start)

    def step(t, carry):
        z, m, v = carry
        g = grad_estimate(z, jax.random.fold_in(k_loop, t))
        m = _BETA1 * m + (1 - _BETA1) * g
        v = _BETA2 * v + (1 - _BETA2) * g * g
        n = (t + 1).astype(jnp.float32)
        m_hat = m / (1 - _BETA1**n)
        v_hat = v / (1 - _BETA2**n)
        # Adam descends the margin (true logit minus the best other one).
        z = project_linf(z - learning_rate * m_hat / (jnp.sqrt(v_hat) + _ADAM_EPS), x, eps)
        return z, m, v

    zeros = jnp.zeros_like(x)
    z, _, _ = jax.lax.fori_loop(0, steps, step, (z0, zeros, zeros))
    return z


def spsa(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    steps: int = 1000,
    samples: int = 2048,
    learning_rate: float = 0.01,
    delta: float = 0.01,
    batch_samples: int = 128,
    random_start: bool = True,
) -> jax.Array:
    """Score-based SPSA attack in the L-inf eps-ball, batched over examples, one jitted call.

    Each step estimates the gradient of the margin z_y - max_{j != y} z_j from `samples`
    evaluations at z + delta*u (u Rademacher, in antithetic pairs +u/-u, independent per
    example, probes clipped to [0, 1]), takes an Adam step (lr `learning_rate`, betas 0.9/0.999)
    that lowers the margin, and projects onto the eps-ball and [0, 1]. Only logits are used.

    Args:
      logits_fn: pure, jittable `(x, key) -> logits`; see `pgd` for how it is passed to jit.
        It sees batches of `batch_samples * B` images.
      x: images [B, H, W, C] in [0, 1].
      y: integer labels [B].
      key: typed key (`jax.random.key`).
      eps: L-inf radius >= 0.
      steps: Adam steps (>= 0); traced, changing it does not retrace.
      samples: loss evaluations per example per step (even, a multiple of `batch_samples`).
      learning_rate: Adam learning rate.
      delta: size of the finite-difference perturbation (> 0).
      batch_samples: samples per `logits_fn` call (even), which bounds memory.
      random_start: start from a uniform point of the eps-ball, as cleverhans does.

    Returns:
      Adversarial images, float32 [B, H, W, C], within `eps` of `x` (L-inf) and in [0, 1].
    """
    x, y = check_inputs(x, y, key)
    check_nonneg("eps", eps)
    check_nonneg("learning_rate", learning_rate)
    check_nonneg("delta", delta)
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta!r}.")
    steps = check_count("steps", steps, 0)
    samples = check_count("samples", samples, 2)
    batch_samples = check_count("batch_samples", batch_samples, 2)
    batch_samples = min(batch_samples, samples)
    if batch_samples % 2 or samples % batch_samples:
        raise ValueError(
            f"samples ({samples}) must be a multiple of batch_samples ({batch_samples}), "
            "and batch_samples must be even (antithetic pairs)."
        )
    dynamic, static = split_fn(logits_fn)
    return _spsa(
        dynamic,
        x,
        y,
        key,
        jnp.float32(eps),
        jnp.int32(steps),
        jnp.float32(learning_rate),
        jnp.float32(delta),
        fn_static=static,
        samples=samples,
        batch_samples=batch_samples,
        random_start=bool(random_start),
    )
