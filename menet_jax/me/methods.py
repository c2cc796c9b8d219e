"""The registry of preprocessing methods (docs/method.md §2.8): name -> `Method`.

Each entry says how to run the method on a masked batch (`solve`, on matrices or on images), the
keyword options it takes from the `me` config, and whether it has an exact reverse-mode gradient.
`me.reconstruct(images, mask, method=NAME)` runs an entry; `menet_jax.preprocess` (which
re-exports `register` and the rest) builds a config's preprocessing from one; `config.me.method`
may name any entry. The built-in methods are registered at the end: the three ME solvers
(docs/method.md §2.3-2.5) and Guo et al.'s TV minimisation (`tvm`, §2.7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from menet_jax.me import solvers, tvm


def _no_options(me_config) -> dict:
    return {}


@dataclasses.dataclass(frozen=True)
class Method:
    """One preprocessing method of the registry.

    Attributes:
      name: the value of `config.me.method` that selects it.
      solve: `solve(a, mask, **options) -> estimate`: `a` is the image mapped to [-1, 1] with the
        unobserved entries set to 0, `mask` the 0/1 observation mask, both laid out as matrices
        [..., m, n] (`matrices=True`, the layout of `me.channels`) or as images [..., H, W, C];
        the estimate has the same shape and is clipped to [-1, 1] afterwards. None: the
        identity (the vanilla baseline "none").
      options: `options(me_config) -> dict`, the keyword options `solve` takes from the config.
      differentiable: `solve` takes `differentiable=True` and then has an exact reverse-mode
        gradient in `a` for the fixed mask (docs/method.md §5.6); False: only BPDA
        (straight-through) gradients, and `eval.gradient="exact"` is refused.
      matrices: True: `solve` sees the matrices of `me.channels`; False: the images.
      config_keys: the `me` keys `options` reads; an evaluation may override them at inference
        (`inference_keys`).
    """

    name: str
    solve: Callable[..., jax.Array] | None
    options: Callable[[Any], dict] = _no_options
    differentiable: bool = False
    matrices: bool = True
    config_keys: tuple[str, ...] = ()


METHODS: dict[str, Method] = {}  # name -> Method; add with `register`


def register(method: Method) -> Method:
    """Adds `method` to the registry (replacing one of the same name); returns it."""
    if not isinstance(method.name, str) or not method.name:
        raise ValueError(f"a method's name must be a non-empty string; got {method.name!r}.")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Removes a registered method (tests that register one clean up with this)."""
    METHODS.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered method names, in the order they were registered."""
    return tuple(METHODS)


def get(name: Any) -> Method:
    """The registered method `name`; ValueError naming the allowed ones otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method must be one of {names()}; got {name!r}.")
    return METHODS[name]


def inference_keys() -> tuple[str, ...]:
    """The `me` keys that shape the reconstruction at inference and nothing else: a trained
    network can be evaluated with other values (`evaluation.evaluate`'s overrides). The mask
    schedule made S' and gives the vote's p's, so it stays the trained run's."""
    keys = ["method", "channels"]
    for method in METHODS.values():
        keys += [k for k in method.config_keys if k not in keys]
    return tuple(keys)


# ---------------------------------------------------------------------------------------------
# The built-in methods (docs/method.md §2.3-2.5).


def _usvt_options(me_config) -> dict:
    opts = {"rank_fraction": float(me_config.rank_fraction)}
    if me_config.threshold != "rank":
        opts["threshold"] = me_config.threshold
    return opts


def _iterative_options(me_config) -> dict:
    opts = {"max_iters": int(me_config.max_iters), "tol": float(me_config.tol)}
    if me_config.accelerated is not None:  # None: the solver's own default
        opts["accelerated"] = bool(me_config.accelerated)
    return opts


def _softimpute_options(me_config) -> dict:
    opts = _iterative_options(me_config)
    if me_config.shrinkage is not None:
        opts["shrinkage"] = float(me_config.shrinkage)
    return opts


def _nucnorm_options(me_config) -> dict:
    return {"mu": float(me_config.mu), **_iterative_options(me_config)}


_ITERATIVE_KEYS = ("max_iters", "tol", "accelerated")
register(Method("none", None, differentiable=True))
register(
    Method(
        "usvt",
        solvers.usvt,
        _usvt_options,
        differentiable=True,
        config_keys=("rank_fraction", "threshold"),
    )
)
register(
    Method(
        "softimpute",
        solvers.softimpute,
        _softimpute_options,
        differentiable=True,
        config_keys=("shrinkage", *_ITERATIVE_KEYS),
    )
)
register(
    Method(
        "nucnorm",
        solvers.nucnorm,
        _nucnorm_options,
        differentiable=True,
        config_keys=("mu", *_ITERATIVE_KEYS),
    )
)


def _tvm_solve(a, mask, *, weight, iterations, differentiable=False):
    """`tvm.tv_minimize` on images mapped to [-1, 1]: the affine map scales the data term by 4
    and TV by 2, so its minimiser is the [0, 1] minimiser mapped likewise."""
    u = tvm.tv_minimize(
        (a + 1.0) / 2.0, mask, weight=weight, iterations=iterations, differentiable=differentiable
    )
    return 2.0 * u - 1.0


def _tvm_options(me_config) -> dict:
    return {"weight": float(me_config.tv_weight), "iterations": int(me_config.tv_iterations)}


register(
    Method(
        "tvm",
        _tvm_solve,
        _tvm_options,
        differentiable=True,
        matrices=False,
        config_keys=("tv_weight", "tv_iterations"),
    )
)
