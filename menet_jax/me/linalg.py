"""Batched spectral kernels shared by the matrix-estimation solvers.

Every solver works on short-wide matrices [..., m, n] with m <= n (32x96 for CIFAR in the
`concat` layout). Instead of an SVD of each m x n matrix we take the eigendecomposition of its
m x m Gram matrix G = A A^T: the singular values are sqrt(eig(G)) and any spectral filter
A -> U diag(f(s)) V^T equals U diag(f(s)/s) U^T A, so V is never needed. Tall inputs are
transposed on the way in and out.

Iterative solvers apply singular-value thresholding (SVT) to a matrix that changes a little from
one iteration to the next. `tracked_svt` exploits that with matrix products only (no LAPACK
call, which XLA:CPU runs one matrix at a time on one thread, and which is slow on TPUs): it keeps
an orthonormal basis U that nearly diagonalises the Gram matrix, refreshes it with two rounds of
simultaneous Jacobi-like rotations, and applies the filter through the first-order
Daleckii-Krein formula, whose error is second order in the (already tiny) off-diagonal part.
"""

import jax
import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


def mm(x: jax.Array, y: jax.Array) -> jax.Array:
    """Batched x @ y at full float32 precision (no TF32/bf16 passes on accelerators)."""
    return jnp.matmul(x, y, precision=_HIGHEST)


def mm_nt(x: jax.Array, y: jax.Array) -> jax.Array:
    """Batched x @ y^T. (XLA:CPU contracts two last axes faster than a first axis, so the
    tracked SVT keeps its basis as rows and only ever forms products of this kind.)"""
    return jnp.einsum("...ik,...jk->...ij", x, y, precision=_HIGHEST)


def gram(a: jax.Array) -> jax.Array:
    """A A^T of each matrix."""
    return mm_nt(a, a)


def gram_eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Singular values and left singular vectors of a batch of wide matrices.

    Args:
      a: [..., m, n] float32 with m <= n.

    Returns:
      (s, u): s [..., m] singular values in ascending order, u [..., m, m] the matching
      left singular vectors (columns).
    """
    w, u = eigh(gram(a))
    return jnp.sqrt(jnp.maximum(w, 0.0)), u


def _one_at_a_time() -> bool:
    """Whether LAPACK's eigendecomposition must be called on one matrix at a time (see `eigh`);
    asked when a function is traced, of the default backend (the one this project runs on)."""
    return jax.default_backend() == "cpu" and jax.local_device_count() > 1


def eigh(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (ascending) and eigenvectors of a batch of symmetric matrices [..., m, m].

    `jnp.linalg.eigh` (input symmetrised), except on a CPU backend with more than one device:
    there jaxlib's LAPACK kernel splits a batch into chunks, schedules them on XLA:CPU's
    shared intra-op thread pool and blocks its own pool thread until they finish; two devices'
    programs doing that at once can occupy every thread, and the step waits forever
    (docs/method.md §9). So there each matrix gets its own LAPACK call (a loop, also under
    `vmap`), which the kernel runs inline: the same decomposition per matrix, the devices
    supplying the parallelism. Differentiable like `jnp.linalg.eigh` (the same JVP rule).
    """
    return _eigh_inline(g) if _one_at_a_time() else _lapack_eigh(g)


def _lapack_eigh(g):
    return jnp.linalg.eigh(g, symmetrize_input=True)


# Under vmap a loop over the batch, not a batched LAPACK call (which would use the thread pool).
_eigh_unbatched = jax.custom_batching.sequential_vmap(_lapack_eigh)


@jax.custom_jvp
def _eigh_inline(g):
    flat = g.reshape((-1,) + g.shape[-2:])
    w, u = lax.map(_eigh_unbatched, flat)
    return w.reshape(g.shape[:-1]), u.reshape(g.shape)


@_eigh_inline.defjvp
def _eigh_inline_jvp(primals, tangents):
    # The symmetric eigenproblem's first-order perturbation (as jax differentiates eigh): with
    # S = U^T dG_sym U, dw = diag(S) and dU = U (F * S), F_ij = 1 / (w_j - w_i) off the diagonal.
    (g,), (dg,) = primals, tangents
    w, u = _eigh_inline(g)
    dg = (dg + jnp.swapaxes(dg, -1, -2)) / 2  # the input is symmetrised
    s = mm(jnp.swapaxes(u, -1, -2), mm(dg, u))
    eye = jnp.eye(w.shape[-1], dtype=w.dtype)
    f = 1.0 / (eye + w[..., None, :] - w[..., :, None]) - eye
    return (w, u), (jnp.diagonal(s, axis1=-2, axis2=-1), mm(u, f * s))


def top_singular_value(a: jax.Array, v0: jax.Array, *, iters: int = 96) -> jax.Array:
    """sigma_max of each wide matrix by power iteration on A A^T from a starting vector.

    Matrix-vector products only, much cheaper than an eigendecomposition. The error
    depends on the gap between the two largest singular values (see `iters`) and on how close
    v0 is to the top vector; the accelerated Soft-Impute starts it from the neighbour-filled
    matrix's top vector.

    Args:
      a: [..., m, n] float32, m <= n.
      v0: [..., m] starting vectors (e.g. the top eigenvector of a nearby Gram matrix).
      iters: power steps; each multiplies the error angle by (sigma_2 / sigma_1)^2, and the
        Rayleigh quotient's error is the square of that angle's sine.

    Returns:
      [...] the largest singular values (0 for an all-zero matrix).
    """
    g = gram(a)
    # Mix in a fixed generic vector so a start orthogonal to the top eigenvector still works.
    v = v0 + 1e-3 * jnp.cos(jnp.arange(v0.shape[-1], dtype=v0.dtype))

    def power(_, v):
        w = jnp.einsum("...ij,...j->...i", g, v, precision=_HIGHEST)
        return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-30)

    v = lax.fori_loop(0, iters, power, v / jnp.linalg.norm(v, axis=-1, keepdims=True))
    rayleigh = jnp.einsum("...i,...ij,...j->...", v, g, v, precision=_HIGHEST)
    return jnp.sqrt(jnp.maximum(rayleigh, 0.0))


def spectral_filter(a: jax.Array, u: jax.Array, factor: jax.Array) -> jax.Array:
    """U diag(factor) U^T A, i.e. each singular value s_i of A scaled by factor_i."""
    uta = mm(jnp.swapaxes(u, -1, -2), a)
    return mm(u, factor[..., :, None] * uta)


def filter_tangent(
    u: jax.Array, uta: jax.Array, f: jax.Array, fdd: jax.Array, da: jax.Array
) -> jax.Array:
    """The derivative of a spectral filter A -> f(A A^T) A = U diag(f) U^T A along dA.

    d[f(G) A] = f(G) dA + U (Fdd o (U^T dG U)) U^T A with dG = dA A^T + A dA^T (Daleckii-Krein;
    o is the entrywise product). The map is self-adjoint (its transpose has the same formula),
    so it serves for vector-Jacobian products too.

    Args:
      u: [..., m, m] eigenvectors (columns) of G = A A^T.
      uta: [..., m, n] U^T A.
      f: [..., m] the filter on the eigenvalues.
      fdd: [..., m, m] its divided differences (f_i - f_j) / (g_i - g_j), f'(g_i) on the
        diagonal (0 there for a piecewise-constant f); symmetric.
      da: [..., m, n] the direction.

    Returns:
      [..., m, n] the directional derivative.
    """
    utda = mm(jnp.swapaxes(u, -1, -2), da)
    c = mm_nt(utda, uta)  # U^T dA A^T U; U^T dG U = c + c^T
    inner = fdd * (c + jnp.swapaxes(c, -1, -2))
    return mm(u, f[..., :, None] * utda + mm(inner, uta))


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


# ---------------------------------------------------------------------------------------------
# Tracked-basis SVT (matrix products only)


def _sym(h: jax.Array) -> jax.Array:
    return 0.5 * (h + jnp.swapaxes(h, -1, -2))


def _congruence(g: jax.Array, v: jax.Array) -> jax.Array:
    """V G V^T, symmetrised (V holds the basis vectors as rows)."""
    return _sym(mm_nt(mm(v, g), v))


def svt_weights(d: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The SVT filter on Gram eigenvalues and its divided differences.

    With f(g) = max(1 - lam / sqrt(g), 0), SVT_lam(A) = f(A A^T) A. For a symmetric
    H = D + E (D = diag(d), E off-diagonal) f(H) = diag(f(d)) + E * F + O(|E|^2) (Daleckii-Krein),
    with F_ij = (f(d_i) - f(d_j)) / (d_i - d_j), written here without cancellation:
    lam / (s_i s_j (s_i + s_j)) when both s = sqrt(d) exceed lam, f(d_hi) / (d_hi - d_lo) when one
    does, 0 when neither does.

    Args:
      d: [..., m] Gram eigenvalue estimates (negative rounding is treated as 0).
      lam: [...] thresholds.

    Returns:
      (f, F): [..., m] and [..., m, m].
    """
    lam = lam[..., None]
    s = jnp.sqrt(jnp.maximum(d, 0.0))
    above = s > lam
    f = jnp.where(above, 1.0 - lam / jnp.where(above, s, 1.0), 0.0)
    si, sj = s[..., :, None], s[..., None, :]
    ai, aj = above[..., :, None], above[..., None, :]
    safe = lambda x: jnp.where(x > 0, x, 1.0)  # noqa: E731
    f_both = lam[..., None] / safe(si * sj * (si + sj))
    f_one = jnp.where(ai, f[..., :, None], f[..., None, :]) / safe(
        jnp.abs(d[..., :, None] - d[..., None, :])
    )
    return f, jnp.where(ai & aj, f_both, jnp.where(ai ^ aj, f_one, 0.0))


def _rotate(h: jax.Array, v: jax.Array, lam: jax.Array, ns_steps: int) -> jax.Array:
    """One round of simultaneous rotations that (nearly) diagonalise H = V G V^T; returns new V.

    With U = V^T: K_ij = E_ij (d_j - d_i) / ((d_j - d_i)^2 + 4 E_ij^2) is the first-order
    Jacobi angle, kept below 1/4 for near-degenerate pairs; pairs that stay below the threshold
    together are not rotated (the filter is 0 on both, so their basis is irrelevant and only
    rounding noise would turn it). U (I + K), i.e. V - K V (K is skew), capped at
    ||K||_F <= 1/2, is re-orthonormalised by `ns_steps` Newton-Schulz steps
    X <- (3 I - X X^T) X / 2, which also repair (quadratically) any drift carried in from
    earlier rounds.
    """
    m = h.shape[-1]
    off = 1.0 - jnp.eye(m, dtype=h.dtype)
    d = jnp.diagonal(h, axis1=-2, axis2=-1)
    e = h * off
    delta = d[..., None, :] - d[..., :, None]
    den = delta * delta + 4.0 * e * e
    k = e * delta / jnp.where(den > 0, den, 1.0)
    lam2 = (lam * lam)[..., None, None]
    ae = jnp.abs(e)
    both_low = (d[..., :, None] + ae < lam2) & (d[..., None, :] + ae < lam2)
    k = jnp.where(both_low, 0.0, k)
    k_norm = jnp.sqrt(jnp.sum(k * k, axis=(-2, -1), keepdims=True))
    k = k * jnp.minimum(1.0, 0.5 / jnp.maximum(k_norm, 1e-30))
    w = v - mm(k, v)
    for _ in range(ns_steps):
        w = 1.5 * w - 0.5 * mm(mm_nt(w, w), w)
    return w


def tracked_svt(
    a: jax.Array, lam: jax.Array, basis: jax.Array, *, rounds: int = 2, ns_steps: int = 2
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`svt` from a warm-started basis, with matrix products only.

    Args:
      a: [..., m, n] float32, m <= n.
      lam: thresholds, broadcastable to a.shape[:-2].
      basis: [..., m, m] orthonormal ROWS that nearly diagonalise A A^T, i.e. U^T for
        eigenvectors U (the previous call's returned basis, or the transpose of `gram_eigh`'s
        vectors for the first one).
      rounds: rotation rounds before filtering.
      ns_steps: Newton-Schulz steps per round. Two (the default) keep runs of thousands of
        iterations accurate; one is cheaper, but rounding can then grow chaotically over long
        runs on noisy matrices.

    Returns:
      (x, s_shrunk, basis_new) as `svt`, plus the refreshed basis to pass to the next call.
    """
    lam = jnp.broadcast_to(jnp.asarray(lam, a.dtype), a.shape[:-2])
    v = basis
    g = gram(a)
    h = _congruence(g, v)
    for _ in range(rounds):
        v = _rotate(h, v, lam, ns_steps)
        h = _congruence(g, v)
    m = h.shape[-1]
    eye = jnp.eye(m, dtype=h.dtype)
    d = jnp.diagonal(h, axis1=-2, axis2=-1)
    f, fdiff = svt_weights(d, lam)
    filt = f[..., :, None] * eye + h * (1.0 - eye) * fdiff
    w = jnp.einsum("...ki,...kj->...ij", v, mm(filt, v), precision=_HIGHEST)  # V^T F V
    shrunk = jnp.maximum(jnp.sqrt(jnp.maximum(d, 0.0)) - lam[..., None], 0.0)
    return mm(w, a), shrunk, v
