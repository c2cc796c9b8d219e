"""Batched spectral kernels shared by the matrix-estimation solvers.

Every solver works on short-wide matrices [..., m, n] with m <= n (32x96 for CIFAR in the
`concat` layout). Instead of an SVD of each m x n matrix we take the eigendecomposition of its
m x m Gram matrix G = A A^T: the singular values are sqrt(eig(G)) and any spectral filter
A -> U diag(f(s)) V^T equals U diag(f(s)/s) U^T A, so V is never needed. Tall inputs are
transposed on the way in and out.
"""

import jax
import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


def mm(x: jax.Array, y: jax.Array) -> jax.Array:
    """Batched x @ y at full float32 precision (no TF32/bf16 passes on accelerators)."""
    return jnp.matmul(x, y, precision=_HIGHEST)


def gram_eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Singular values and left singular vectors of a batch of wide matrices.

    Args:
      a: [..., m, n] float32 with m <= n.

    Returns:
      (s, u): s [..., m] singular values in ascending order, u [..., m, m] the matching
      left singular vectors (columns).
    """
    g = mm(a, jnp.swapaxes(a, -1, -2))
    w, u = jnp.linalg.eigh(g, symmetrize_input=True)
    return jnp.sqrt(jnp.maximum(w, 0.0)), u


def spectral_filter(a: jax.Array, u: jax.Array, factor: jax.Array) -> jax.Array:
    """U diag(factor) U^T A, i.e. each singular value s_i of A scaled by factor_i."""
    uta = mm(jnp.swapaxes(u, -1, -2), a)
    return mm(u, factor[..., :, None] * uta)


def svt(a: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Singular-value soft-thresholding of a batch of wide matrices.

    Args:
      a: [..., m, n] float32, m <= n.
      lam: threshold, broadcastable to a.shape[:-2].

    Returns:
      (x, s_shrunk): x = U diag(max(s - lam, 0)) V^T and the shrunk singular values [..., m]
      (the singular values of x, whose sum is ||x||_*).
    """
    s, u = gram_eigh(a)
    lam = jnp.asarray(lam, a.dtype)[..., None]
    shrunk = jnp.maximum(s - lam, 0.0)
    factor = jnp.where(s > lam, shrunk / jnp.where(s > 0, s, 1.0), 0.0)
    return spectral_filter(a, u, factor), shrunk


def to_wide(*xs: jax.Array | None) -> tuple[bool, list[jax.Array | None]]:
    """Transposes tall matrices [..., m, n] (m > n) to wide ones; returns (transposed, xs)."""
    tall = xs[0].shape[-2] > xs[0].shape[-1]
    if not tall:
        return False, list(xs)
    return True, [None if x is None else jnp.swapaxes(x, -1, -2) for x in xs]
