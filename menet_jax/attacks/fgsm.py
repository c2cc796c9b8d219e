"""FGSM: the fast gradient sign method (Goodfellow et al., 2015), L-inf."""

from functools import partial

import jax
import jax.numpy as jnp

from menet_jax.attacks.arguments import check_inputs, check_nonneg
from menet_jax.attacks.linf import project_linf
from menet_jax.attacks.logits_fn import LogitsFn, merge_fn, split_fn
from menet_jax.attacks.losses import cross_entropy


@partial(jax.jit, static_argnames=("fn_static",))
def _fgsm(fn_dynamic, x, y, key, eps, *, fn_static):
    logits_fn = merge_fn(fn_dynamic, fn_static)
    grad = jax.grad(lambda z: jnp.sum(cross_entropy(logits_fn(z, key), y)))(x)
    return project_linf(x + eps * jnp.sign(grad), x, eps)


def fgsm(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *, eps: float
) -> jax.Array:
    """One signed-gradient step on the cross-entropy: clip(x + eps * sign(grad), ball, [0, 1]).

    Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.

    Args:
      logits_fn: pure, jittable `(x, key) -> logits [B, K]`; the key feeds the model's own
        randomness (ME-Net's masks). A plain function is a static jit argument hashed by
        identity; a pytree callable (`jax.tree_util.Partial`, NNX module) passes its arrays as
        traced arguments. It must treat examples independently (no batch statistics).
      x: images [B, H, W, C] in [0, 1].
      y: integer labels [B].
      key: typed key (`jax.random.key`), passed to `logits_fn` as is.
      eps: L-inf radius >= 0.

    Returns:
      Adversarial images, float32 [B, H, W, C], within `eps` of `x` (L-inf) and in [0, 1].
    """
    x, y = check_inputs(x, y, key)
    check_nonneg("eps", eps)
    dynamic, static = split_fn(logits_fn)
    return _fgsm(dynamic, x, y, key, jnp.float32(eps), fn_static=static)
