"""Attack losses and the plumbing every attack shares.

Losses are per example and oriented the attacker's way: the attack *maximises* them.

* `cross_entropy`: softmax cross-entropy of the true label.
* `margin`: z_y - max_{j != y} z_j on logits (negative = misclassified).
* `cw_loss`: Madry et al.'s CW-L-inf loss, the attacker minimises max(margin, -kappa), i.e.
  maximises min(-margin, kappa): flat once a wrong logit beats the true one by kappa.

Shared plumbing: argument checks, the L-inf projection, and `split_fn` / `merge_fn`, which let
the jitted attacks take `logits_fn` either as a plain (static, hashed by identity) function or as
a pytree callable (`jax.tree_util.Partial`, a flax NNX module) whose array leaves are traced
arguments, so new parameters do not retrace and are not baked into the program as constants.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]
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


# ---------------------------------------------------------------------------------------------
# logits_fn through jit


def split_fn(logits_fn: LogitsFn) -> tuple[list[Any], tuple[Any, ...]]:
    """Splits `logits_fn` into traced array leaves and a hashable static part.

    A plain function is all static (jit hashes it by identity: reuse the same object, or every
    call retraces). A pytree callable (`jax.tree_util.Partial(apply, params)`, an NNX module)
    passes its arrays as traced arguments.
    """
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable (x, key) -> logits, got {logits_fn!r}.")
    leaves, treedef = jax.tree_util.tree_flatten(logits_fn)
    is_array = tuple(isinstance(leaf, jax.Array | np.ndarray) for leaf in leaves)
    dynamic = [leaf if a else None for leaf, a in zip(leaves, is_array, strict=True)]
    static = tuple(None if a else leaf for leaf, a in zip(leaves, is_array, strict=True))
    return dynamic, (treedef, static, is_array)


def merge_fn(dynamic: list[Any], static: tuple[Any, ...]) -> LogitsFn:
    """Inverse of `split_fn` (inside the jitted attack)."""
    treedef, static_leaves, is_array = static
    leaves = [d if a else s for d, s, a in zip(dynamic, static_leaves, is_array, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ---------------------------------------------------------------------------------------------
# argument checks (errors a user can cause)


def check_inputs(x: Any, y: Any, key: Any) -> tuple[jax.Array, jax.Array]:
    """Checks images [B,H,W,C], labels [B] and a typed key; returns (float32 x, int32 y)."""
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"x must be images [B, H, W, C], got shape {tuple(x.shape)}.")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must be integer labels of shape [{x.shape[0]}], got shape {tuple(y.shape)}."
        )
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must hold integer labels, got dtype {y.dtype}.")
    if not (isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise ValueError(
            f"key must be a typed key from jax.random.key(seed), got {getattr(key, 'dtype', key)}."
        )
    if key.shape != ():
        raise ValueError(f"key must be a single key (shape ()), got shape {key.shape}.")
    return x.astype(jnp.float32), y.astype(jnp.int32)


def check_nonneg(name: str, value: Any) -> None:
    """Raises ValueError unless a concrete `value` is a finite number >= 0 (tracers pass)."""
    if isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value)
    if v.shape != () or not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def check_count(name: str, value: Any, minimum: int) -> int:
    """Raises ValueError unless `value` is an int >= `minimum`; returns it as int."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)
