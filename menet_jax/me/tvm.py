"""Total variation minimisation (TVM), Guo et al. (ICLR 2018)'s input transformation, as a solver.

Random pixel dropout, then the image that minimises, per colour channel,

    0.5 * sum over kept pixels (u - x)^2  +  weight * TV(u),

TV the isotropic total variation of forward differences (0 past the last row and column),
solved batched and jitted by Chambolle-Pock's primal-dual algorithm with a fixed number of
iterations (docs/method.md §2.7, which gives Guo et al.'s code, its defaults and where ours
differs). The mask comes from `masks.sample_mask(key, shape, p)` with `channels="concat"`
(every pixel of every channel dropped independently, as Guo et al. drop them); their
`pixel_drop_rate` is 1 - p.

`differentiable=True` runs the same iterations as a `lax.fori_loop` of fixed length, so
`jax.grad` differentiates the unrolled iterations exactly (each iteration's state is kept for the
backward pass); off (the default), a `lax.while_loop` that keeps nothing and, like the iterative
ME solvers, cannot be reverse-differentiated: use BPDA (a straight-through estimator) there.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from menet_jax.me import masks

# Guo et al.'s defaults (adversarial/lib/constants.py of facebookresearch/
# adversarial_image_defenses): TVM_WEIGHT = 0.03, PIXEL_DROP_RATE = 0.5.
TVM_WEIGHT = 0.03
TVM_KEEP_PROBABILITY = 0.5  # our p = 1 - PIXEL_DROP_RATE
# Enough for 32x32 photo tiles at p = 0.5 to come within a median RMS of 2.3e-4 of cvxpy's
# minimiser, objective a median 2.8e-4 above its minimum (docs/method.md §2.7, BENCHMARKS.md).
TVM_ITERATIONS = 300
# A guard against a mistyped count (the default is 300), not a limit of the method.
MAX_ITERATIONS = 100_000
# Step sizes: tau * sigma * ||grad||^2 <= 1 with ||grad||^2 < 8 guarantees convergence; tau = 1
# (rather than the symmetric 1/sqrt(8)) fits the kept pixels faster on [0, 1] images.
_TAU = 1.0
_SIGMA = 1.0 / 8.0


def check_tvm_options(*, weight: Any = TVM_WEIGHT, iterations: Any = TVM_ITERATIONS) -> None:
    """Raises ValueError, one sentence, unless weight is a finite number > 0 and iterations an
    integer in [1, MAX_ITERATIONS]. A traced weight (inside jit) passes unchecked."""
    if not _positive_number(weight):
        raise ValueError(f"the TV weight must be a finite number > 0; got {weight!r}.")
    if (
        isinstance(iterations, bool)
        or not isinstance(iterations, int | np.integer)
        or not 1 <= iterations <= MAX_ITERATIONS
    ):
        raise ValueError(
            f"the TV iteration count must be an integer in [1, {MAX_ITERATIONS}]; "
            f"got {iterations!r}."
        )


def _positive_number(value: Any) -> bool:
    """A finite scalar > 0 (a Python, numpy or concrete jax number), or a tracer."""
    if isinstance(value, jax.core.Tracer):
        return True
    if isinstance(value, bool | str | bytes):
        return False
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return v.ndim == 0 and bool(np.isfinite(v)) and float(v) > 0


def _pad(x: jax.Array, axis: int, before: int, after: int) -> jax.Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths)


def _gradient(u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Forward differences of [..., H, W] along W and H, 0 in the last column / row."""
    gx = _pad(u[..., :, 1:] - u[..., :, :-1], -1, 0, 1)
    gy = _pad(u[..., 1:, :] - u[..., :-1, :], -2, 0, 1)
    return gx, gy


def _divergence(px: jax.Array, py: jax.Array) -> jax.Array:
    """-(the adjoint of `_gradient`): <_gradient(u), (px, py)> = -<u, _divergence(px, py)>."""
    px, py = px[..., :, :-1], py[..., :-1, :]
    return _pad(px, -1, 0, 1) - _pad(px, -1, 1, 0) + _pad(py, -2, 0, 1) - _pad(py, -2, 1, 0)


def _channels_first(x: jax.Array) -> jax.Array:
    """[..., H, W, C] -> [..., C, H, W]: the differences then run along contiguous rows, which
    XLA:CPU computes faster than strided ones (BENCHMARKS.md)."""
    return jnp.moveaxis(x, -1, -3)


def total_variation(u: jax.Array) -> jax.Array:
    """Isotropic TV of each channel, summed over channels: [..., H, W, C] -> [...]."""
    gx, gy = _gradient(_channels_first(u))
    return jnp.sum(jnp.sqrt(gx * gx + gy * gy), axis=(-3, -2, -1))


def tv_objective(u: jax.Array, images: jax.Array, mask: jax.Array, *, weight: float) -> jax.Array:
    """The objective `tv_minimize` minimises, per image: [..., H, W, C] -> [...]."""
    r = mask * (u - images)
    return 0.5 * jnp.sum(r * r, axis=(-3, -2, -1)) + weight * total_variation(u)


def _step(state, f, obs, weight):
    """One Chambolle-Pock iteration on (u, u_bar, px, py)."""
    u, u_bar, px, py = state
    gx, gy = _gradient(u_bar)
    px, py = px + _SIGMA * gx, py + _SIGMA * gy
    # Projection onto {|p| <= weight} per pixel and channel (the isotropic TV's dual ball).
    # Written so that no square root of 0 is differentiated (its derivative is infinite).
    n2 = px * px + py * py
    outside = n2 > weight * weight
    scale = jnp.where(outside, jnp.sqrt(jnp.where(outside, n2, 1.0)) / weight, 1.0)
    px, py = px / scale, py / scale
    v = u + _TAU * _divergence(px, py)
    u_new = jnp.where(obs > 0, (v + _TAU * f) / (1.0 + _TAU), v)  # prox of the data term
    return u_new, 2.0 * u_new - u, px, py


@functools.partial(jax.jit, static_argnames=("iterations", "differentiable"))
def _tv_minimize(images, mask, weight, *, iterations, differentiable):
    images, mask = _channels_first(images), _channels_first(lax.stop_gradient(mask))
    f = images * mask  # Guo et al. start from the dropped image (dropped pixels 0)
    zeros = jnp.zeros_like(f)
    state = (f, f, zeros, zeros)
    step = functools.partial(_step, f=f, obs=mask, weight=weight)
    if differentiable:
        # Static bounds: lowered to a scan, reverse-differentiable; checkpointing the body keeps
        # only the four carried arrays per iteration for the backward pass.
        body = jax.checkpoint(lambda _, s: step(s))
        u = lax.fori_loop(0, iterations, body, state)[0]
        inside = (u >= 0.0) & (u <= 1.0)
        # jnp.clip's gradient is 1/2 on the edge; the derivative from inside the box is 1.
        u = jnp.where(inside, u, lax.stop_gradient(jnp.clip(u, 0.0, 1.0)))
    else:
        _, state = lax.while_loop(
            lambda c: c[0] < iterations, lambda c: (c[0] + 1, step(c[1])), (0, state)
        )
        u = jnp.clip(state[0], 0.0, 1.0)
    return jnp.moveaxis(u, -3, -1)


def tv_minimize(
    images: jax.Array,
    mask: jax.Array,
    *,
    weight: float = TVM_WEIGHT,
    iterations: int = TVM_ITERATIONS,
    differentiable: bool = False,
) -> jax.Array:
    """Guo et al.'s TVM reconstruction of images whose dropped pixels are `mask == 0`.

    Minimises `tv_objective` per image and channel by `iterations` Chambolle-Pock steps from the
    dropped image; jit-compatible and batched over any leading dimensions (vmap works too).

    Args:
      images: [B, H, W, C] (or [H, W, C]) in [0, 1]; dropped pixels' values are ignored.
      mask: 0/1 of the same shape, 1 = kept (e.g. `sample_mask(key, shape, p)`, p = 1 - Guo's
        drop rate). Gets no gradient.
      weight: the TV weight (Guo et al.'s TVM_WEIGHT, 0.03), a finite number > 0.
      iterations: Chambolle-Pock iterations, an integer in [1, MAX_ITERATIONS].
      differentiable: make `jax.grad` differentiate the fixed-count iterations exactly (memory:
        about 4 x iterations x the images' size). Same values.

    Returns:
      float32 images of the same shape, clipped to [0, 1].

    Raises:
      ValueError: bad weight or iterations, or shapes that differ or are not [..., H, W, C].
    """
    check_tvm_options(weight=weight, iterations=iterations)
    images, mask = masks.images_and_mask(images, mask)
    return _tv_minimize(
        images,
        mask,
        jnp.asarray(weight, jnp.float32),
        iterations=int(iterations),
        differentiable=bool(differentiable),
    )
