"""Attack losses, per example and oriented the attacker's way: the attack *maximises* them.

* `cross_entropy`: softmax cross-entropy of the true label.
* `margin`: z_y - max_{j != y} z_j on logits (negative = misclassified).
* `cw_loss`: Madry et al.'s CW-L-inf loss, the attacker minimises max(margin, -kappa), i.e.
  maximises min(-margin, kappa): flat once a wrong logit beats the true one by kappa.
* `dlr_loss`: Croce and Hein's difference of logits ratio, -margin / (z_pi1 - z_pi3), with
  z_pi1 >= z_pi2 >= ... the sorted logits: unchanged by shifting or (positively) scaling the
  logits, so it does not saturate the way cross-entropy does. At least 3 classes. Exactly 1
  wherever the true class ranks third (z_y = z_pi3), so its gradient there is rounding noise.
* `dlr_targeted_loss`: its targeted form, -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), for a
  target class t. At least 4 classes.
* `attack_loss` picks an untargeted one by its name in `LOSSES`.
"""

from typing import Any

import jax
import jax.numpy as jnp

LOSSES = ("ce", "cw", "dlr")

# Keeps the DLR ratios finite where the top logits tie (Croce and Hein 2020, AutoAttack).
_DLR_EPS = 1e-12


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


def _top_logits(logits: jax.Array, k: int, loss: str) -> jax.Array:
    """The k largest logits per example, [B, k], sorted down; at least k classes."""
    if logits.shape[-1] < k:
        raise ValueError(
            f"loss {loss!r} needs at least {k} classes, got logits with {logits.shape[-1]}."
        )
    return jax.lax.top_k(logits.astype(jnp.float32), k)[0]


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Difference of logits ratio, -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), [B]."""
    top = _top_logits(logits, 3, "dlr")
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + _DLR_EPS)


def dlr_targeted_loss(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted DLR, -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), [B]; t = `target`."""
    top = _top_logits(logits, 4, "dlr_targeted")
    logits = logits.astype(jnp.float32)
    z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    z_t = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_EPS)


def attack_loss(name: str, logits: jax.Array, y: jax.Array, kappa: Any = 0.0) -> jax.Array:
    """The loss `name` ("ce", "cw" or "dlr") of `logits`, per example, to be maximised."""
    if name == "ce":
        return cross_entropy(logits, y)
    if name == "cw":
        return cw_loss(logits, y, kappa)
    if name == "dlr":
        return dlr_loss(logits, y)
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}.")
