"""Random observation masks (docs/method.md §2.2) and the paper's observation-probability
schedules (docs/method.md §3.1)."""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CHANNEL_MODES = ("concat", "separate")

# Smallest observation probability a traced p is clipped to.
_P_MIN = 1e-6


def check_channels(channels: Any) -> None:
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {CHANNEL_MODES}; got {channels!r}.")


def check_p(p: Any) -> None:
    """Raises ValueError unless a concrete p lies in (0, 1]; traced values pass unchecked."""
    if isinstance(p, jax.core.Tracer):
        return
    v = np.asarray(p, dtype=np.float64)
    if v.size == 0 or np.any(~np.isfinite(v) | (v <= 0) | (v > 1)):
        raise ValueError(f"p must be in (0, 1] (a scalar or one value per example); got {p!r}.")


def images_and_mask(images: Any, mask: Any) -> tuple[jax.Array, jax.Array]:
    """float32 images [B, H, W, C] (or [H, W, C]) and a mask of the same shape.

    Raises:
      ValueError: images of fewer than 3 dimensions, or a mask of another shape.
    """
    images = jnp.asarray(images, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if images.ndim < 3:
        raise ValueError(f"images must be [B, H, W, C] or [H, W, C]; got shape {images.shape}.")
    if mask.shape != images.shape:
        raise ValueError(
            f"mask must have the same shape as images {images.shape}; got {mask.shape}."
        )
    return images, mask


def sample_mask(
    key: jax.Array, shape: Sequence[int], p: Any, *, channels: str = "concat"
) -> jax.Array:
    """Draws a Bernoulli(p) observation mask (1 = observed) for images of shape [..., H, W, C].

    Args:
      key: a jax.random key (typed `jax.random.key` or a legacy uint32 key).
      shape: [..., H, W, C]; a single image [H, W, C] works too (vmap it over per-example keys).
      p: observation probability in (0, 1]: a Python float, a scalar array, or one value per
        leading batch entry (shape [B] for shape [B, H, W, C]; generally shape[:-3]). A concrete
        p outside (0, 1] raises ValueError; a traced p (inside jit/vmap/grad) cannot be checked
        and is clipped into [1e-6, 1] instead.
      channels: "concat" draws every entry independently (the paper's [R|G|B] layout);
        "separate" draws one H x W mask per image shared by all C channels.

    Returns:
      float32 0/1 array of `shape`.

    Raises:
      ValueError: bad shape, p or channels.
    """
    check_channels(channels)
    shape = tuple(int(d) for d in shape)
    if len(shape) < 3:
        raise ValueError(f"shape must be [..., H, W, C] (at least 3 dims); got {shape}.")
    check_p(p)
    p = jnp.clip(jnp.asarray(p, jnp.float32), _P_MIN, 1.0)
    lead = shape[:-3]
    if p.ndim > 0:
        if p.shape != lead[: p.ndim] or p.ndim > len(lead):
            raise ValueError(
                f"p must be a scalar or have shape {lead} (one value per example); "
                f"got shape {p.shape}."
            )
        p = p.reshape(p.shape + (1,) * (len(shape) - p.ndim))
    draw_shape = shape if channels == "concat" else shape[:-1] + (1,)
    u = jax.random.uniform(key, draw_shape, jnp.float32)
    # u lies in [0, 1), so p = 1 observes every entry.
    mask = (u < p).astype(jnp.float32)
    return jnp.broadcast_to(mask, shape)


def p_schedule(
    start: float, end: float, num_masks: int, *, include_end: bool = False
) -> np.ndarray:
    """The paper's equal-interval observation probabilities for n masks per image.

    start + k * (end - start) / num_masks for k = 0..n-1 (the paper's text: "0.6 -> 0.8" with
    n = 10 is 0.60, 0.62, ..., 0.78); include_end=True gives the authors' code's k = 1..n
    (0.62, ..., 0.80).

    Args:
      start: first probability, in (0, 1].
      end: the interval's other end, in (0, 1].
      num_masks: n >= 1.
      include_end: use k = 1..n instead of 0..n-1.

    Returns:
      np.ndarray float32 of num_masks values.

    Raises:
      ValueError: start or end outside (0, 1], or num_masks not a positive integer.
    """
    for name, v in (("start", start), ("end", end)):
        if not (isinstance(v, int | float | np.floating | np.integer) and 0 < v <= 1):
            raise ValueError(f"{name} must be a number in (0, 1]; got {v!r}.")
    if isinstance(num_masks, bool) or not isinstance(num_masks, int | np.integer) or num_masks < 1:
        raise ValueError(f"num_masks must be an integer >= 1; got {num_masks!r}.")
    k = np.arange(num_masks, dtype=np.float64) + (1.0 if include_end else 0.0)
    return (start + k * (end - start) / num_masks).astype(np.float32)
