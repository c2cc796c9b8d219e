"""The `logits_fn` every attack takes, and how it crosses into a jitted attack.

`LogitsFn` is `(x, key) -> logits`. `split_fn` / `merge_fn` let the jitted attacks take it
either as a plain function (static, hashed by identity) or as a pytree callable
(`jax.tree_util.Partial`, a flax NNX module) whose array leaves are traced arguments, so new
parameters do not retrace and are not baked into the program as constants. The public attack
splits it; its jitted core merges it back.
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


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
