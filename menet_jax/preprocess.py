"""What happens to an image before the network, built once from `config.me` (docs/method.md §2.7).

The registry `METHODS` (`register`, `get`, `names`) maps each method name to a `Method`: its
solver, the keyword options it takes from the `me` config, whether it has an exact reverse-mode
gradient and whether it works on matrices (the layout `me.channels` picks) or on images. Config
validation, training (S' offline and online), adversarial training, the defended classifier, the
studies and `bench train --method` read this registry and nothing else, so one
`register(Method(...))` makes a new purification defence available to all of them.

`Preprocessor.from_config(config.me)` is the one place that turns `config.me` into a
reconstruction. It owns
  the p's: `training_ps` (Algorithm 1's schedule), `inference_p`, `vote_ps` (supplement J);
  mask drawing: `sample_mask` (one key for a batch) and `example_masks` (one key per example:
    S' draws with `rng.example_keys`, adversarial training's final masks with its own keys);
  the reconstruction of a masked batch: `reconstruct(images, mask, differentiable=...)`;
  S' entries: `examples(seed, images, image_idx, copy_idx)`, quantized to the uint8 grid;
  per-device execution over a mesh (`menet_jax.mesh.per_device`): `on_devices`,
    `examples_on_devices` and `transform(mesh=...)`;
  inference: `transform(gradient=..., mesh=...)` -> fn(key, images, p), with BPDA
    (straight-through), the exact gradient for the drawn mask, or ME as written.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from menet_jax import mesh as mesh_lib
from menet_jax import rng
from menet_jax.me import masks, solvers
from menet_jax.me.reconstruct import apply_method

GRADIENTS = ("none", "bpda", "exact")


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


# ---------------------------------------------------------------------------------------------
# Checks before any work


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError when the configured method cannot run in a mode the config asks for:
    exact gradients through ME (`eval.gradient="exact"`) for a method that has none."""
    from menet_jax.config import ConfigError

    method = get(config.me.method)
    ev = config.get("eval")
    if ev is not None and ev.get("gradient") == "exact" and not method.differentiable:
        raise ConfigError(
            f"config.eval.gradient='exact' needs an exact gradient through ME, and "
            f"config.me.method={method.name!r} has none (registered with differentiable=False); "
            "use config.eval.gradient='bpda'"
        )


# ---------------------------------------------------------------------------------------------
# The preprocessing of one config


def quantize(images: jax.Array) -> jax.Array:
    """Rounds [0,1] images to the uint8 grid S' is stored on."""
    return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0) / 255.0


def straight_through(x: jax.Array, y: jax.Array) -> jax.Array:
    """BPDA: the value of `y`, the gradient of the identity in `x`."""
    return x + jax.lax.stop_gradient(y - x)


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessor:
    """`config.me` as a reconstruction: masks, the method, its gradients, per-device execution.

    Attributes:
      method: the registered method.
      channels: the matrix layout and mask rule (`me.channels`).
      options: the keyword options of `method.solve` (from `method.options(me_config)`).
      me_config: the `me` section (its mask schedule and inference p).
    """

    method: Method
    channels: str
    options: Mapping[str, Any]
    me_config: ml_collections.ConfigDict

    @classmethod
    def from_config(cls, me_config: ml_collections.ConfigDict) -> Preprocessor:
        """The preprocessing `me_config` describes; ValueError for an unknown method."""
        method = get(me_config.method)
        return cls(method, me_config.channels, dict(method.options(me_config)), me_config)

    @property
    def identity(self) -> bool:
        """True for the vanilla baseline (no masks, no reconstruction)."""
        return self.method.solve is None

    # The p's ----------------------------------------------------------------------------------

    def training_ps(self) -> np.ndarray:
        """The n observation probabilities of Algorithm 1 (one per mask); [1.0] without ME."""
        c = self.me_config
        if self.identity:
            return np.ones((1,), np.float32)
        return masks.p_schedule(c.p_start, c.p_end, c.num_masks, include_end=c.include_end)

    def inference_p(self) -> float:
        """The test-time p: `me.inference_p` if set, else the mean of the training p's."""
        if self.me_config.inference_p is not None:
            return float(self.me_config.inference_p)
        return float(np.mean(self.training_ps()))

    def vote_ps(self, votes: int) -> jax.Array:
        """Observation probabilities of the k voting masks: the training schedule with k masks."""
        c = self.me_config
        if self.identity:
            return jnp.ones((votes,), jnp.float32)
        return jnp.asarray(masks.p_schedule(c.p_start, c.p_end, votes, include_end=c.include_end))

    # Masks ------------------------------------------------------------------------------------

    def sample_mask(self, key: jax.Array, shape, p) -> jax.Array:
        """One Bernoulli(p) mask for a batch of `shape` from one key (`me.sample_mask`)."""
        return masks.sample_mask(key, shape, p, channels=self.channels)

    def example_masks(self, keys: jax.Array, copy_idx: jax.Array, shape) -> jax.Array:
        """One mask per example [B, *shape]: example b's from keys[b], at copy copy_idx[b]'s p."""
        ps = jnp.asarray(self.training_ps())[copy_idx]
        return jax.vmap(lambda k, p: self.sample_mask(k, tuple(shape), p))(keys, ps)

    # The reconstruction -----------------------------------------------------------------------

    def reconstruct(self, images: jax.Array, mask: jax.Array, *, differentiable: bool = False):
        """The method applied to images [B,H,W,C] in [0,1] under `mask` (`me.reconstruct`).

        Raises:
          ValueError: `differentiable=True` for a method without an exact gradient.
        """
        return apply_method(
            self.method,
            images,
            mask,
            channels=self.channels,
            differentiable=differentiable,
            **self.options,
        )

    def on_devices(self, mesh, *, differentiable: bool = False) -> Callable:
        """`reconstruct(images, mask)` for a batch sharded over `mesh`'s 'data', run per device:
        inside one jit an iterative solver's `while_loop` would otherwise stop on a global
        condition, a cross-device reduction every iteration (docs/method.md §9)."""
        solve = functools.partial(self.reconstruct, differentiable=differentiable)
        return mesh_lib.per_device(solve, mesh, 2)

    def examples(self, seed: int, images, image_idx, copy_idx) -> jax.Array:
        """S' entries (docs/method.md §3.2): image i masked with its (i, k) key
        (`rng.example_keys`) at p_k, reconstructed, quantized to the uint8 grid.

        Args:
          seed: the run's seed.
          images: float [B,H,W,C] in [0,1], the training images i.
          image_idx: int [B], the image indices i.
          copy_idx: int [B], the copy indices k in [0, n).
        """
        keys = rng.example_keys(seed, image_idx, copy_idx)
        mask = self.example_masks(keys, copy_idx, images.shape[1:])
        return quantize(self.reconstruct(images, mask))

    def examples_on_devices(self, seed: int, mesh) -> Callable:
        """`examples(seed, ...)` for a batch sharded over `mesh`, run per device; every
        example's mask comes from its own (i, k) key, so the entries are those of one device."""

        def fn(images, image_idx, copy_idx):
            return self.examples(seed, images, image_idx, copy_idx)

        return mesh_lib.per_device(fn, mesh, 3)

    # Inference --------------------------------------------------------------------------------

    def check_gradient(self, gradient: str) -> None:
        """ValueError unless `gradient` is one of GRADIENTS and the method supports it."""
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}; got {gradient!r}.")
        if gradient == "exact" and not self.method.differentiable:
            raise ValueError(
                f"method {self.method.name!r} has no exact gradient (registered with "
                "differentiable=False); use BPDA"
            )

    def transform(self, *, gradient: str = "none", mesh=None) -> Callable:
        """Returns `fn(key, images, p) -> the images the network sees`.

        One fresh mask at p (a scalar or one per image) drawn from `key` over the whole batch,
        then the method. `gradient`: "none" leaves it as written; "bpda" passes the gradient
        straight through (the identity, docs/method.md §5.1); "exact" differentiates through
        the solver for the drawn mask (§5.6; the same values).

        With a `mesh` of several devices (axis 'data'), a batch [B,H,W,C] whose B the device
        count divides is reconstructed per device (`on_devices`); the mask is still drawn over
        the whole batch, before the split, so every image gets the mask it gets on one device.
        """
        self.check_gradient(gradient)
        exact = gradient == "exact"
        several = mesh is not None and mesh.size > 1
        per_device = self.on_devices(mesh, differentiable=exact) if several else None

        def rebuilt(key: jax.Array, images: jax.Array, p) -> jax.Array:
            if self.identity:
                return images
            shape = jnp.shape(images)
            mask = self.sample_mask(key, shape, p)
            if per_device is None or len(shape) != 4 or shape[0] % mesh.size:
                return self.reconstruct(images, mask, differentiable=exact)
            return per_device(images, mask)

        if gradient != "bpda":
            return rebuilt
        return lambda key, images, p: straight_through(images, rebuilt(key, images, p))


def from_config(me_config: ml_collections.ConfigDict) -> Preprocessor:
    """`Preprocessor.from_config(me_config)`."""
    return Preprocessor.from_config(me_config)
