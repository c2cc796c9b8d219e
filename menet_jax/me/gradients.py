"""Exact reverse-mode gradients of the ME solvers with respect to the image, for a fixed mask.

The solvers take `differentiable=True` (docs/method.md §5.6) to route through this module. Their
forward values are unchanged (the same computation); what changes is what `jax.grad` sees:

* USVT (`truncation`): A0 -> U diag(keep) U^T A0 / p_hat, a projection of the zero-filled
  matrix onto its retained left singular subspace. Its derivative is the Daleckii-Krein formula
  (`linalg.filter_tangent`), whose only non-zero divided differences are 1 / (g_i - g_j) across
  the cut (one Gram eigenvalue kept, the other dropped). Where such a pair is degenerate,
  |g_i - g_j| <= GAP_RTOL * g_max, the truncation is not differentiable (which of the two
  vectors is kept is arbitrary); the term is set to 0, which is the derivative with that choice
  of retained subspace held fixed. An all-zero matrix (g_max = 0) thus gets P dA, the kept
  projection of the change. p_hat is a constant of the mask.
* Soft-Impute and the nuclear norm (`fixed_point`): both return (a function of) the fixed point
  x* = P_obs(A0) + P_miss(SVT_lam(x*)). The gradient is that of the exact fixed point by the
  implicit-function theorem, linearised at the estimate the forward loop returned (which stops
  at its tolerance: fancyimpute's 1e-3 for Soft-Impute, so "exact" is the gradient of the
  converged fixed point, evaluated near it; a smaller `tol` evaluates it nearer). The SVT
  Jacobian K at x* (one eigendecomposition) is self-adjoint with eigenvalues in [0, 1], so the
  adjoint system (I - P_miss K P_miss) q = P_miss xbar is symmetric positive semi-definite and
  solved by conjugate gradients per matrix (relative residual ADJOINT_TOL, at most
  ADJOINT_MAX_ITERS steps). The plain adjoint iteration q <- P_miss xbar + P_miss K q contracts
  only by the spectral radius of P_miss K P_miss, 0.96-0.98 on photo tiles at p = 0.5 (300-1000
  steps for 1e-5); CG needs at most 49. Unrolling the loop instead would differentiate the tracked
  SVT's approximation and keep every iteration for the backward pass. On 32x96 photo tiles at
  p = 0.5 with the default tol the gradient is 5-11% (accelerated: 0.6-3.5%) from the converged
  fixed point's, whose derivative differs from that of the loop as stopped by 2-50%
  (docs/method.md §5.6). SVT's divided differences are bounded (`linalg.svt_weights`:
  smooth above the threshold, 0 below, the one-sided value at s = lam), so no gap tolerance is
  needed there. lam = sigma_max(A0) / 50 (Soft-Impute's default) is differentiated too
  (d sigma_max = u1^T dA0 v1, 0 at A0 = 0); lam = mu / 2 and a given shrinkage receive their
  own cotangents. The warm start never matters to a fixed point and gets no gradient.

Limits: reverse mode only for the iterative solvers (`jax.custom_vjp`; `jax.jvp` through them
raises); the mask gets no gradient; the clip to [-1, 1] in `reconstruct` zeroes the gradient of
every saturated pixel, as it should (the estimate does not move there). Where the minimiser is
not unique (a direction on the missing entries along which the objective is flat), the adjoint
system is singular and the fixed point has no derivative: CG then stops at a breakdown and
returns a finite but large gradient. Seen on small random matrices with most of a row missing
(3 of 18 6x10 problems at p = 0.5), never on photo tiles or digit-like images at p >= 0.3
(768 matrices, condition numbers <= 1.3e3).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from menet_jax.me import linalg

# Gram eigenvalue pairs closer than this fraction of the largest are treated as degenerate by
# the USVT derivative. float32 eigh resolves eigenvalues to about eps * g_max (1.2e-7 g_max) and
# a pair's eigenvectors to eps * g_max / gap, so below ~100 eps the split of a pair's subspace
# is rounding noise that 1 / gap would amplify more than 1e5-fold.
GAP_RTOL = 1e-5
# Conjugate gradients on the adjoint system: float32 bottoms out near a relative residual of
# 1e-6. To 1e-5, 32x96 photo tiles take 12-69 steps (median over p = 0.3-0.8; at most 107) and
# 28x28 digit-like images 23-129; the cap bounds the rare ill-conditioned matrix's cost.
ADJOINT_TOL = 1e-5
ADJOINT_MAX_ITERS = 200
# A search direction whose curvature p^T A p / ||p||^2 is below this is a breakdown: the system is
# singular to float32 (realistic matrices stay above 1e-3, condition numbers <= 1.3e3).
_MIN_CURVATURE = 1e-6
_HIGHEST = lax.Precision.HIGHEST


def _sum2(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.sum(x * y, axis=(-2, -1))


# ---------------------------------------------------------------------------------------------
# USVT


def _indicator_differences(g: jax.Array, keep: jax.Array) -> jax.Array:
    """(keep_i - keep_j) / (g_i - g_j), 0 for pairs within GAP_RTOL * g_max of each other."""
    gap = g[..., :, None] - g[..., None, :]
    tol = GAP_RTOL * jnp.max(g, axis=-1)[..., None, None]
    apart = jnp.abs(gap) > tol
    return jnp.where(
        apart, (keep[..., :, None] - keep[..., None, :]) / jnp.where(apart, gap, 1.0), 0.0
    )


@jax.custom_jvp
def _projection(a, u, g, keep):
    return linalg.spectral_filter(a, u, keep)


@_projection.defjvp
def _projection_jvp(primals, tangents):
    a, u, g, keep = primals
    out = linalg.spectral_filter(a, u, keep)
    uta = linalg.mm(jnp.swapaxes(u, -1, -2), a)
    fdd = _indicator_differences(g, keep)
    return out, linalg.filter_tangent(u, uta, keep, fdd, tangents[0])


def truncation(a: jax.Array, u: jax.Array, s: jax.Array, keep: jax.Array) -> jax.Array:
    """U diag(keep) U^T A with the derivative of a fixed retained subspace at degenerate cuts.

    Args:
      a: [..., m, n] wide matrices (differentiable).
      u, s: their Gram eigenvectors and singular values (`linalg.gram_eigh`), any gradient
        through them is dropped: the derivative is computed here.
      keep: [..., m] 0/1, which eigenvectors are kept (a function of s, held fixed).

    Returns:
      [..., m, n] the same value as `linalg.spectral_filter(a, u, keep)`.
    """
    u, s, keep = (lax.stop_gradient(x) for x in (u, s, keep))
    return _projection(a, u, s * s, keep)


# ---------------------------------------------------------------------------------------------
# sigma_max (Soft-Impute's default lambda)


@jax.custom_jvp
def _top_value(a, value):
    return value


@_top_value.defjvp
def _top_value_jvp(primals, tangents):
    a, value = primals
    _, u = linalg.gram_eigh(a)
    u1 = u[..., :, -1]
    at_u = jnp.einsum("...in,...i->...n", a, u1, precision=_HIGHEST)  # A^T u1 = s1 v1
    d_at_u = jnp.einsum("...in,...i->...n", tangents[0], u1, precision=_HIGHEST)
    ds = jnp.sum(d_at_u * at_u, axis=-1) / jnp.where(value > 0, value, 1.0)
    return value, jnp.where(value > 0, ds, 0.0)


def top_singular_value(a: jax.Array, value: jax.Array) -> jax.Array:
    """Returns `value` (sigma_max(a), however the caller computed it) with its exact derivative.

    d sigma_max = u1^T dA v1 for the top singular pair (any one of them if the top value is
    repeated: sigma_max is then only directionally differentiable); 0 at a = 0.
    """
    return _top_value(a, lax.stop_gradient(value))


# ---------------------------------------------------------------------------------------------
# Soft-Impute and nuclear norm: implicit differentiation of the SVT fixed point


def _cg(apply, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Solves apply(q) = b per matrix by conjugate gradients (apply symmetric, PSD).

    A matrix stops when its residual is below ADJOINT_TOL * ||b|| (at once when b = 0), or on a
    breakdown (p^T A p <= _MIN_CURVATURE * ||p||^2: the system is singular to float32, which keeps
    every step, and so the result, finite); all stop at ADJOINT_MAX_ITERS.

    Returns:
      (q, steps): the solutions and how many CG steps each matrix took.
    """
    bb = _sum2(b, b)
    goal = (ADJOINT_TOL * ADJOINT_TOL) * bb

    def cond(carry):
        i, _, _, _, rr, live, _ = carry
        return (i < ADJOINT_MAX_ITERS) & jnp.any(live & (rr > goal))

    def body(carry):
        i, q, r, p, rr, live, steps = carry
        ap = apply(p)
        pap = _sum2(p, ap)
        active = live & (rr > goal) & (pap > _MIN_CURVATURE * _sum2(p, p))
        alpha = jnp.where(active, rr / jnp.where(active, pap, 1.0), 0.0)[..., None, None]
        q = q + alpha * p
        r = r - alpha * ap
        rr_new = _sum2(r, r)
        beta = (rr_new / jnp.where(active, rr, 1.0))[..., None, None]
        p = jnp.where(active[..., None, None], r + beta * p, p)
        rr = jnp.where(active, rr_new, rr)
        return i + 1, q, r, p, rr, live & active, steps + active.astype(jnp.int32)

    live = jnp.ones(bb.shape, bool)
    carry = (0, jnp.zeros_like(b), b, b, bb, live, jnp.zeros(bb.shape, jnp.int32))
    _, q, _, _, _, _, steps = lax.while_loop(cond, body, carry)
    return q, steps


def _adjoint(x, lam, obs, out_bar, restore_observed):
    """Cotangents (a0_bar, lam_bar) of the fixed point's output given out_bar.

    x is the SVT input at the fixed point, T(x) = P_obs a0 + P_miss SVT_lam(x); the output is x
    (Soft-Impute, restore_observed) or SVT_lam(x) (nuclear norm). With K the SVT Jacobian at x
    (self-adjoint) and R = -d SVT / d lam = U diag(1[s > lam] / s) U^T x: solve
    v = xbar + K P_miss v through q = P_miss v, (I - P_miss K P_miss) q = P_miss xbar, then
    v = xbar + K q, a0_bar = P_obs v and lam_bar = -<q, R> (- <out_bar, R> for the nuclear norm).
    """
    s, u = linalg.gram_eigh(x)
    f, fdd = linalg.svt_weights(s * s, lam)
    uta = linalg.mm(jnp.swapaxes(u, -1, -2), x)
    jac = functools.partial(linalg.filter_tangent, u, uta, f, fdd)
    above = s > lam[..., None]
    r_lam = linalg.mm(u, jnp.where(above, 1.0 / jnp.where(above, s, 1.0), 0.0)[..., None] * uta)
    miss = 1.0 - obs
    if restore_observed:
        x_bar, lam_bar = out_bar, 0.0
    else:
        x_bar, lam_bar = jac(out_bar), -_sum2(out_bar, r_lam)
    q, _ = _cg(lambda q: q - miss * jac(miss * q), miss * x_bar)
    v = x_bar + jac(q)
    return obs * v, lam_bar - _sum2(q, r_lam)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def fixed_point(solve, restore_observed, a0, lam, obs, z0, u0):
    """The SVT fixed point's estimate with the implicit-function gradient in a0 and lam.

    Args:
      solve: (a0, obs, lam, z0, u0=u0) -> (z, iterations), the forward loop
        (`solvers._prox_loop` with its options bound); z ~ SVT_lam(P_obs a0 + P_miss z).
      restore_observed: return P_obs a0 + P_miss z (Soft-Impute) instead of z (nuclear norm).
      a0: [..., m, n] wide zero-filled matrices (differentiable).
      lam: [...] thresholds (differentiable).
      obs: [..., m, n] 0/1 masks; z0, u0: warm start and its basis (u0 may be None). None of
        these three gets a gradient.

    Returns:
      (estimate [..., m, n], iterations [...]).
    """
    z, iters = solve(a0, obs, lam, z0, u0=u0)
    return (jnp.where(obs > 0, a0, z) if restore_observed else z), iters


def _fixed_point_fwd(solve, restore_observed, a0, lam, obs, z0, u0):
    out, iters = fixed_point(solve, restore_observed, a0, lam, obs, z0, u0)
    return (out, iters), (a0, lam, obs, out)


def _fixed_point_bwd(solve, restore_observed, res, cts):
    a0, lam, obs, out = res
    x = jnp.where(obs > 0, a0, out)
    a0_bar, lam_bar = _adjoint(x, lam, obs, cts[0], restore_observed)
    return a0_bar, lam_bar, None, None, None  # no gradient to the mask and the warm start


fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)
