"""Argument checks of the matrix-estimation solvers: errors a user can cause, one sentence each.

Concrete values are checked; traced values (inside jit) pass unchecked.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_pair(a: Any, mask: Any) -> tuple[jax.Array, jax.Array]:
    a = jnp.asarray(a, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if a.ndim < 2:
        raise ValueError(f"a must have shape [..., m, n] (at least 2 dims); got shape {a.shape}.")
    if mask.shape != a.shape:
        raise ValueError(f"mask must have the same shape as a {a.shape}; got shape {mask.shape}.")
    return a, mask


def check_positive(name: str, value: Any, *, upper: float | None = None) -> None:
    """Raises ValueError unless a concrete value is > 0 (and <= upper); tracers pass unchecked."""
    if value is None or not is_concrete(value):
        return
    v = np.asarray(value, dtype=np.float64)
    bad = ~np.isfinite(v) | (v <= 0) | ((v > upper) if upper is not None else False)
    if np.any(bad):
        allowed = f"in (0, {upper}]" if upper is not None else "> 0"
        raise ValueError(f"{name} must be {allowed}; got {value!r}.")


def _check_iters(max_iters: Any) -> None:
    if isinstance(max_iters, bool) or not isinstance(max_iters, int | np.integer) or max_iters < 1:
        raise ValueError(f"max_iters must be an integer >= 1; got {max_iters!r}.")


def _check_lanes(lanes: Any) -> None:
    if lanes is not None and (
        isinstance(lanes, bool) or not isinstance(lanes, int | np.integer) or lanes < 1
    ):
        raise ValueError(f"lanes must be None or an integer >= 1; got {lanes!r}.")


SVT_METHODS = ("tracked", "eigh")


def check_iterative(a, mask, init, max_iters, tol, accelerated, lanes, svt, differentiable):
    """The argument checks Soft-Impute and the nuclear norm share.

    Returns:
      (a, mask, options): the arrays as float32 and the static loop options.
    """
    if svt not in SVT_METHODS:
        raise ValueError(f"svt must be one of {SVT_METHODS}; got {svt!r}.")
    a, mask = check_pair(a, mask)
    check_positive("tol", tol)
    _check_iters(max_iters)
    if init is not None and jnp.shape(init) != a.shape:
        raise ValueError(f"init must have the same shape as a {a.shape}; got {jnp.shape(init)}.")
    _check_lanes(lanes)
    options = {
        "max_iters": max_iters,
        "tol": tol,
        "accelerated": bool(accelerated),
        "lanes": lanes,
        "svt": svt,
        "differentiable": bool(differentiable),
    }
    return a, mask, options
