"""Image <-> matrix layouts and ME-Net's reconstruction of masked images (docs/method.md §2.1).

`reconstruct(images, mask, method=NAME)` runs a method of the registry `methods.METHODS`
(`apply_method` runs a `methods.Method` itself). `differentiable=True` makes `reconstruct`
and `mask_and_reconstruct` exactly reverse-differentiable in the images for the drawn (fixed)
mask (`gradients`, docs/method.md §5.6): missing pixels get zero gradient, and so does every
pixel whose estimate the clip to [-1, 1] saturates (strictly beyond +-1), since the output does
not move there.
"""

from typing import Any

import jax
import jax.numpy as jnp

from menet_jax.me import masks, methods


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
    differentiable: bool = False,
    **solver_options: Any,
) -> jax.Array:
    """ME-Net's preprocessing: rebuild masked images with matrix estimation.

    Pixels in [0, 1] are mapped to [-1, 1], laid out as H x (W*C) matrices [R|G|B] ("concat")
    or one H x W matrix per channel ("separate"), unobserved entries set to 0, solved, clipped
    to [-1, 1] and mapped back to [0, 1]. Jit-compatible; see `solvers` for the methods.

    Args:
      images: [B, H, W, C] (or a single [H, W, C]) in [0, 1]; grayscale is C = 1.
      mask: 0/1 observation mask of the same shape (e.g. from `sample_mask`).
      method: a registered method (`methods.names()`); "none" returns the images.
      channels: one of CHANNEL_MODES.
      differentiable: an exact reverse-mode gradient in `images` for this fixed mask (the
        solver's `differentiable` option; "none" is the identity either way). Same values.
      **solver_options: passed to the solver (e.g. rank_fraction, shrinkage, mu, accelerated).

    Returns:
      float32 images of the same shape, in [0, 1].

    Raises:
      ValueError: unknown method or channels, mismatched shapes, bad solver options.
    """
    return apply_method(
        methods.get(method),
        images,
        mask,
        channels=channels,
        differentiable=differentiable,
        **solver_options,
    )


def apply_method(
    method,
    images: jax.Array,
    mask: jax.Array,
    *,
    channels: str = "concat",
    differentiable: bool = False,
    **solver_options: Any,
) -> jax.Array:
    """`reconstruct` with a `methods.Method` in place of its name."""
    masks.check_channels(channels)
    images, mask = masks.images_and_mask(images, mask)
    if method.solve is None:
        if solver_options:
            raise ValueError(
                f"method={method.name!r} takes no solver options; got {sorted(solver_options)}."
            )
        return images
    if differentiable:
        if not method.differentiable:
            raise ValueError(
                f"method {method.name!r} has no exact gradient (registered with "
                "differentiable=False); use BPDA"
            )
        mask = jax.lax.stop_gradient(mask)
        solver_options = {**solver_options, "differentiable": True}
    elif method.differentiable:
        solver_options = {**solver_options, "differentiable": False}
    a, m = 2.0 * images - 1.0, mask
    if method.matrices:
        a, m = images_to_matrices(a, channels), images_to_matrices(mask, channels)
    est = method.solve(a * m, m, **solver_options)
    out = (_clip(est, differentiable) + 1.0) / 2.0
    return matrices_to_images(out, images.shape, channels) if method.matrices else out


def _clip(est: jax.Array, differentiable: bool) -> jax.Array:
    """Clip to [-1, 1]. Differentiable: gradient 1 on [-1, 1] closed, 0 strictly outside.

    jnp.clip's gradient is 1/2 at exactly +-1, which Soft-Impute hits on every observed pixel
    at 0 or 1 (it returns observed entries unchanged, so the map is the identity there); the
    derivative from inside the box, the side the image may move to, is 1. Same values.
    """
    clipped = jnp.clip(est, -1.0, 1.0)
    if not differentiable:
        return clipped
    inside = (est >= -1.0) & (est <= 1.0)
    return jnp.where(inside, est, jax.lax.stop_gradient(clipped))


def mask_and_reconstruct(
    key: jax.Array,
    images: jax.Array,
    p: Any,
    *,
    method: str = "usvt",
    channels: str = "concat",
    differentiable: bool = False,
    **solver_options: Any,
) -> jax.Array:
    """Draws a fresh mask with `sample_mask(key, images.shape, p)` and reconstructs.

    Usable inside jit and under grad, either with a straight-through estimator
    (x + stop_gradient(mask_and_reconstruct(...) - x), BPDA) or with differentiable=True (the
    exact gradient for the mask drawn from `key`). p is a scalar or one value per example;
    a concrete p outside (0, 1] raises ValueError, a traced p is clipped into (0, 1].

    Args:
      key: jax.random key.
      images: [B, H, W, C] (or [H, W, C]) in [0, 1].
      p: observation probability, scalar or [B].
      method: a registered method.
      channels: one of CHANNEL_MODES.
      differentiable: as in `reconstruct`.
      **solver_options: passed to the solver.

    Returns:
      float32 reconstructed images in [0, 1], same shape as images.
    """
    methods.get(method)  # an unknown method fails before the mask is drawn
    mask = masks.sample_mask(key, jnp.shape(images), p, channels=channels)
    return reconstruct(
        images,
        mask,
        method=method,
        channels=channels,
        differentiable=differentiable,
        **solver_options,
    )
