"""Argument checks shared by the public attacks: errors a user can cause, as one clear sentence.

They run eagerly, before an attack's jitted core. `check_nonneg` lets a traced value through,
so eps and the like may be traced when an attack is called inside a user's own jit.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


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


def check_fraction(name: str, value: Any) -> None:
    """Raises ValueError unless a concrete `value` is a number in [0, 1] (tracers pass)."""
    if isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value)
    if v.shape != () or not np.isfinite(v) or not 0 <= v <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
