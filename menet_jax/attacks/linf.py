"""The L-inf threat model's geometry: projection onto the eps-ball and the distance to score.

`pgd` and `spsa` start at `start_point`; `fgsm`, `pgd` and `spsa` end every step with
`project_linf`; `boundary` is unbounded, and its results (like any attack's) are scored with
`linf_distance`.
"""

import jax
import jax.numpy as jnp


def project_linf(x_adv: jax.Array, x: jax.Array, eps: float | jax.Array) -> jax.Array:
    """Projects `x_adv` onto the L-inf `eps`-ball around `x` intersected with [0, 1].

    x + eps rounds in float32, so an entry whose computed |x_adv - x| still exceeds eps is moved
    one float towards x: the result satisfies |x_adv - x| <= eps in float32 arithmetic.
    """
    x_adv = jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)
    return jnp.where(jnp.abs(x_adv - x) > eps, jnp.nextafter(x_adv, x), x_adv)


def linf_distance(x: jax.Array, x_adv: jax.Array) -> jax.Array:
    """Per-example L-inf distance max |x_adv - x| over all pixels, [B]."""
    diff = jnp.abs(jnp.asarray(x_adv, jnp.float32) - jnp.asarray(x, jnp.float32))
    return jnp.max(diff.reshape(diff.shape[0], -1), axis=-1)


def start_point(key: jax.Array, x: jax.Array, eps, *, random_start: bool) -> jax.Array:
    """Where an eps-ball attack starts: x, or x + uniform(-eps, eps) projected (`random_start`)."""
    x0 = x
    if random_start:
        x0 = x + jax.random.uniform(key, x.shape, jnp.float32, -eps, eps)
    return project_linf(x0, x, eps)
