"""What happens to an image before the network, built once from `config.me` (docs/method.md §2.8).

The registry `METHODS` (`register`, `get`, `names`: `menet_jax.me.methods`, re-exported here)
maps each method name to a `Method`: its solver, the keyword options it takes from the `me`
config, whether it has an exact reverse-mode gradient and whether it works on matrices (the
layout `me.channels` picks) or on images. Config validation, training (S' offline and online),
adversarial training, the defended classifier, the studies and `bench train --method` read this
registry and nothing else, so one `register(Method(...))` makes a new purification defence
available to all of them.

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
from menet_jax.config import ConfigError
from menet_jax.me import masks
from menet_jax.me.methods import METHODS, Method, get, inference_keys, names, register, unregister
from menet_jax.me.reconstruct import apply_method

__all__ = [
    "GRADIENTS", "METHODS", "Method", "Preprocessor", "check_config", "from_config", "get",
    "inference_keys", "names", "quantize", "register", "straight_through", "unregister",
]  # fmt: skip

GRADIENTS = ("none", "bpda", "exact")


# ---------------------------------------------------------------------------------------------
# Checks before any work


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError when the configured method cannot run in a mode the config asks for:
    exact gradients through ME (`eval.gradient="exact"`) for a method that has none."""
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
