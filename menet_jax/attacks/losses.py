"""Attack losses, per example and oriented the attacker's way: the attack *maximises* them.

* `cross_entropy`: softmax cross-entropy of the true label.
* `margin`: z_y - max_{j != y} z_j on logits (negative = misclassified).
* `cw_loss`: Madry et al.'s CW-L-inf loss, the attacker minimises max(margin, -kappa), i.e.
  maximises min(-margin, kappa): flat once a wrong logit beats the true one by kappa.
* `attack_loss` picks one of them by its name in `LOSSES`.
"""

from typing import Any

import jax
import jax.numpy as jnp

LOSSES = ("ce", "cw")


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy of the true labels, [B]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example margin z_y - max_{j != y} z_j, [B]; negative means misclassified."""
    logits = logits.astype(jnp.float32)
    true = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    is_true = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    other = jnp.max(jnp.where(is_true, -jnp.inf, logits), axis=-1)
    return true - other


def cw_loss(logits: jax.Array, y: jax.Array, kappa: float | jax.Array = 0.0) -> jax.Array:
    """Madry's CW-L-inf loss as the attacker maximises it: -max(margin, -kappa), [B]."""
    return -jnp.maximum(margin(logits, y), -kappa)


def attack_loss(name: str, logits: jax.Array, y: jax.Array, kappa: Any = 0.0) -> jax.Array:
    """The loss `name` ("ce" or "cw") of `logits`, per example, to be maximised."""
    if name == "ce":
        return cross_entropy(logits, y)
    if name == "cw":
        return cw_loss(logits, y, kappa)
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}.")
