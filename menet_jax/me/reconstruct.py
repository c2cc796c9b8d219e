"""Image <-> matrix layouts and ME-Net's reconstruction of masked images (docs/method.md §2.1)."""

from typing import Any

import jax
import jax.numpy as jnp

from menet_jax.me import masks, solvers

METHODS = ("none", "usvt", "softimpute", "nucnorm")

_SOLVERS = {"usvt": solvers.usvt, "softimpute": solvers.softimpute, "nucnorm": solvers.nucnorm}


def check_method(method: Any) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")


def images_to_matrices(x: jax.Array, channels: str) -> jax.Array:
    """[..., H, W, C] -> [..., H, C*W] ([R|G|B], concat) or [..., C, H, W] (separate)."""
    if channels == "concat":
        h, w, c = x.shape[-3:]
        return jnp.swapaxes(x, -1, -2).reshape(x.shape[:-3] + (h, c * w))
    return jnp.moveaxis(x, -1, -3)


def matrices_to_images(m: jax.Array, shape: tuple[int, ...], channels: str) -> jax.Array:
    """Inverse of images_to_matrices for images of shape [..., H, W, C]."""
    h, w, c = shape[-3:]
    if channels == "concat":
        return jnp.swapaxes(m.reshape(m.shape[:-2] + (h, c, w)), -1, -2)
    return jnp.moveaxis(m, -3, -1)


def reconstruct(
    images: jax.Array,
    mask: jax.Array,
    *,
    method: str = "usvt",
    channels: str = "concat",
    **solver_options: Any,
) -> jax.Array:
    """ME-Net's preprocessing: rebuild masked images with matrix estimation.

    Pixels in [0, 1] are mapped to [-1, 1], laid out as H x (W*C) matrices [R|G|B] ("concat")
    or one H x W matrix per channel ("separate"), unobserved entries set to 0, solved, clipped
    to [-1, 1] and mapped back to [0, 1]. Jit-compatible; see `solvers` for the methods.

    Args:
      images: [B, H, W, C] (or a single [H, W, C]) in [0, 1]; grayscale is C = 1.
      mask: 0/1 observation mask of the same shape (e.g. from `sample_mask`).
      method: one of METHODS; "none" returns the images unchanged.
      channels: one of CHANNEL_MODES.
      **solver_options: passed to the solver (e.g. rank_fraction, shrinkage, mu, accelerated).

    Returns:
      float32 images of the same shape, in [0, 1].

    Raises:
      ValueError: unknown method or channels, mismatched shapes, bad solver options.
    """
    check_method(method)
    masks.check_channels(channels)
    images = jnp.asarray(images, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if images.ndim < 3:
        raise ValueError(f"images must be [B, H, W, C] or [H, W, C]; got shape {images.shape}.")
    if mask.shape != images.shape:
        raise ValueError(
            f"mask must have the same shape as images {images.shape}; got {mask.shape}."
        )
    if method == "none":
        if solver_options:
            raise ValueError(
                f"method='none' takes no solver options; got {sorted(solver_options)}."
            )
        return images
    a = images_to_matrices(2.0 * images - 1.0, channels)
    m = images_to_matrices(mask, channels)
    est = _SOLVERS[method](a * m, m, **solver_options)
    out = (jnp.clip(est, -1.0, 1.0) + 1.0) / 2.0
    return matrices_to_images(out, images.shape, channels)


def mask_and_reconstruct(
    key: jax.Array,
    images: jax.Array,
    p: Any,
    *,
    method: str = "usvt",
    channels: str = "concat",
    **solver_options: Any,
) -> jax.Array:
    """Draws a fresh mask with `sample_mask(key, images.shape, p)` and reconstructs.

    Usable inside jit and under grad with a straight-through estimator
    (x + stop_gradient(mask_and_reconstruct(...) - x)). p is a scalar or one value per example;
    a concrete p outside (0, 1] raises ValueError, a traced p is clipped into (0, 1].

    Args:
      key: jax.random key.
      images: [B, H, W, C] (or [H, W, C]) in [0, 1].
      p: observation probability, scalar or [B].
      method: one of METHODS.
      channels: one of CHANNEL_MODES.
      **solver_options: passed to the solver.

    Returns:
      float32 reconstructed images in [0, 1], same shape as images.
    """
    check_method(method)
    mask = masks.sample_mask(key, jnp.shape(images), p, channels=channels)
    return reconstruct(images, mask, method=method, channels=channels, **solver_options)
