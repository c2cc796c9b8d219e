"""Matrix-estimation solvers: USVT, Soft-Impute and nuclear-norm minimisation.

All three take a batch of matrices a [..., m, n] (values in [-1, 1]; entries where mask == 0 are
ignored) and a same-shape 0/1 mask (1 = observed), and return the unclipped float32 estimate
[..., m, n]. They are pure, jit-compatible and natively batched (no Python loop over matrices or
iterations, no host callbacks), so they can run inside a jitted training step. The iterative
solvers stop per matrix: a matrix that has converged is frozen while the rest of the batch keeps
iterating in the same `lax.while_loop`.

Semantics follow the ME-Net authors' code (see SPEC section 2):

* `usvt`: rank-truncated SVD of the zero-filled matrix divided by the observed fraction.
* `softimpute`: fancyimpute's SoftImpute (lambda = sigma_max / 50, <= 100 iterations, relative
  change on the missing entries < 1e-3), observed entries returned unchanged. `accelerated=True`
  adds FISTA momentum with function-value restarts (same fixed point, fewer iterations).
* `nucnorm`: argmin_X mu*||X||_* + ||P_obs(X - A)||_F^2 (what the authors solved with cvxpy/SCS),
  by accelerated proximal gradient (FISTA with restarts) on that objective.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from menet_jax.me import linalg

_F32_EPS = float(np.finfo(np.float32).eps)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_pair(a: Any, mask: Any) -> tuple[jax.Array, jax.Array]:
    a = jnp.asarray(a, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if a.ndim < 2:
        raise ValueError(f"a must have shape [..., m, n] (at least 2 dims); got shape {a.shape}.")
    if mask.shape != a.shape:
        raise ValueError(f"mask must have the same shape as a {a.shape}; got shape {mask.shape}.")
    return a, mask


def _check_positive(name: str, value: Any, *, upper: float | None = None) -> None:
    """Raises ValueError unless a concrete value is > 0 (and <= upper); tracers pass unchecked."""
    if value is None or not _is_concrete(value):
        return
    v = np.asarray(value, dtype=np.float64)
    bad = ~np.isfinite(v) | (v <= 0) | ((v > upper) if upper is not None else False)
    if np.any(bad):
        allowed = f"in (0, {upper}]" if upper is not None else "> 0"
        raise ValueError(f"{name} must be {allowed}; got {value!r}.")


def _check_iters(max_iters: Any) -> None:
    if isinstance(max_iters, bool) or not isinstance(max_iters, int | np.integer) or max_iters < 1:
        raise ValueError(f"max_iters must be an integer >= 1; got {max_iters!r}.")


def _check_lanes(lanes: Any) -> None:
    if lanes is not None and (
        isinstance(lanes, bool) or not isinstance(lanes, int | np.integer) or lanes < 1
    ):
        raise ValueError(f"lanes must be None or an integer >= 1; got {lanes!r}.")


SVT_METHODS = ("tracked", "eigh")


def _check_iterative(a, mask, *, tol, max_iters, init, lanes, svt) -> tuple[jax.Array, jax.Array]:
    """The argument checks Soft-Impute and the nuclear norm share; returns (a, mask)."""
    if svt not in SVT_METHODS:
        raise ValueError(f"svt must be one of {SVT_METHODS}; got {svt!r}.")
    a, mask = _check_pair(a, mask)
    _check_positive("tol", tol)
    _check_iters(max_iters)
    if init is not None and jnp.shape(init) != a.shape:
        raise ValueError(f"init must have the same shape as a {a.shape}; got {jnp.shape(init)}.")
    _check_lanes(lanes)
    return a, mask


def observed_fraction(mask: jax.Array) -> jax.Array:
    """Measured observation rate p_hat of each matrix, [...]."""
    return jnp.mean(mask, axis=(-2, -1))


# ---------------------------------------------------------------------------------------------
# USVT


def usvt(
    a: jax.Array,
    mask: jax.Array,
    *,
    rank_fraction: float = 0.8,
    threshold: str | float | None = None,
    eta: float = 0.01,
) -> jax.Array:
    """Universal singular value thresholding, as the ME-Net authors coded it.

    The zero-filled matrix is decomposed, its top floor(rank_fraction * min(m, n)) singular
    values are kept (25 of 32 for CIFAR), the rest zeroed, and the result divided by p_hat, the
    measured observed fraction of that matrix's mask.

    Args:
      a: [..., m, n] matrices with values in [-1, 1]; entries where mask == 0 are ignored.
      mask: [..., m, n] 0/1, 1 = observed.
      rank_fraction: fraction of min(m, n) singular values kept, in (0, 1]; used when
        threshold is None.
      threshold: None for the authors' rank rule; "chatterjee" for Chatterjee (2015)'s rule, keep
        singular values >= (2 + eta) * sqrt(max(m, n) * p_hat) (on raw [-1, 1] photo tiles at
        p = 0.5 it keeps nothing on about two thirds of them: a grey image); or a positive
        number, keep singular values >= that value.
      eta: the Chatterjee rule's slack.

    Returns:
      [..., m, n] float32 unclipped estimate.

    Raises:
      ValueError: shapes differ, rank_fraction outside (0, 1] or an unknown threshold.
    """
    a, mask = _check_pair(a, mask)
    _check_positive("rank_fraction", rank_fraction, upper=1.0)
    if threshold is not None and not isinstance(threshold, str):
        _check_positive("threshold", threshold)
    elif isinstance(threshold, str) and threshold != "chatterjee":
        raise ValueError(
            f"threshold must be None, 'chatterjee' or a number > 0; got {threshold!r}."
        )
    return _usvt(a, mask, rank_fraction=rank_fraction, threshold=threshold, eta=eta)


@functools.partial(jax.jit, static_argnames=("rank_fraction", "threshold", "eta"))
def _usvt(a, mask, *, rank_fraction, threshold, eta):
    m, n = a.shape[-2:]
    p_hat = observed_fraction(mask)
    tall, (a0,) = linalg.to_wide(a * mask)
    s, u = linalg.gram_eigh(a0)  # ascending
    k = min(m, n)
    if threshold is None:
        keep_count = int(np.floor(rank_fraction * k + 1e-9))
        factor = jnp.broadcast_to(jnp.arange(k) >= k - keep_count, s.shape).astype(a.dtype)
    else:
        if threshold == "chatterjee":
            tau = (2.0 + eta) * jnp.sqrt(max(m, n) * p_hat)
        else:
            tau = jnp.full(p_hat.shape, threshold, a.dtype)
        factor = (s >= tau[..., None]).astype(a.dtype)
    x = linalg.spectral_filter(a0, u, factor)
    if tall:
        x = jnp.swapaxes(x, -1, -2)
    # An all-missing matrix is all zeros, so any positive divisor returns zeros.
    return x / jnp.maximum(p_hat, 1.0 / (m * n))[..., None, None]


def neighbour_fill(a0: jax.Array, obs: jax.Array) -> jax.Array:
    """Average of the observed entries in each entry's 3x3 neighbourhood (0 where none).

    A cheap warm start for the missing entries of image matrices (zero padding at the edges).
    """

    def box(x):
        pad = [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)]
        xp = jnp.pad(x, pad)
        m, n = x.shape[-2:]
        rows = xp[..., :-2, :] + xp[..., 1:-1, :] + xp[..., 2:, :]
        return rows[..., :, :n] + rows[..., :, 1 : n + 1] + rows[..., :, 2:]

    return box(a0) / jnp.maximum(box(obs), 1.0)


# ---------------------------------------------------------------------------------------------
# Proximal-gradient core shared by Soft-Impute and nuclear-norm minimisation


def _step(z, z_prev, t, f_prev, u, a0, obs, region, lam, *, tol, accelerated, fancy_rule, svt):
    """One (accelerated) proximal-gradient step for every matrix; returns the new state + conv.

    u is the tracked basis (`linalg.tracked_svt`) when svt == "tracked", carried unchanged for
    svt == "eigh".
    """
    if accelerated:
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        beta = ((t - 1.0) / t_next)[..., None, None]
        y = z + beta * (z - z_prev)
    else:
        t_next, y = t, z
    x = jnp.where(obs > 0, a0, y)
    if svt == "tracked":
        z_new, shrunk, u = linalg.tracked_svt(x, lam, u)
    else:
        z_new, shrunk = linalg.svt(x, lam)
    diff = jnp.sqrt(jnp.sum(region * (z_new - z) ** 2, axis=(-2, -1)))
    old = jnp.sqrt(jnp.sum(region * z**2, axis=(-2, -1)))
    if fancy_rule:
        edge = (old == 0) | ((old < _F32_EPS) & (diff > _F32_EPS))
        conv = ~edge & (diff < tol * old)
    else:
        conv = diff <= tol * old
    if accelerated:
        resid = obs * (z_new - a0)
        f_new = lam * jnp.sum(shrunk, -1) + 0.5 * jnp.sum(resid**2, axis=(-2, -1))
        restart = f_new > f_prev
        t_next = jnp.where(restart, 1.0, t_next)
        z_prev_new = jnp.where(restart[..., None, None], z_new, z)
    else:
        f_new, z_prev_new = f_prev, z
    return z_new, z_prev_new, t_next, f_new, u, conv


def _prox_loop(
    a0, obs, lam, init, *, max_iters, tol, accelerated, fancy_rule, svt, lanes=None, u0=None
):
    """Iterates Z <- SVT_lam(P_obs(A) + P_miss(Y)) per matrix until converged.

    Y = Z (Soft-Impute, plain proximal gradient) or Z + beta (Z - Z_prev) (FISTA) with a
    function-value restart of the momentum whenever lam*||Z||_* + 0.5*||P_obs(Z - A)||^2 rises.

    fancy_rule: convergence as fancyimpute measures it (relative change of the missing entries,
    never converged while they are all zero) instead of the relative change of the whole Z.
    svt: "tracked" (`linalg.tracked_svt`, matrix products only, the basis carried from one
    iteration to the next) or "eigh" (`linalg.svt`, a LAPACK/cuSOLVER eigendecomposition per
    iteration).
    lanes: iterate only this many matrices at a time, refilling a lane with the next matrix as
    soon as its matrix converges (same iterations; the work follows the mean iteration count
    instead of the batch's maximum).
    u0: the Gram eigenvectors of P_obs(A) + P_miss(init) if the caller already has them.

    Returns:
      (z, iters): the estimates and each matrix's iteration count.
    """
    batch = a0.shape[:-2]
    region = (1.0 - obs) if fancy_rule else jnp.ones_like(obs)
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), batch)
    z0 = a0 if init is None else jnp.where(obs > 0, a0, init)
    # Nothing to estimate (no missing entry) means nothing changes: done from the start.
    done0 = jnp.sum(region, axis=(-2, -1)) == 0 if fancy_rule else jnp.zeros(batch, bool)
    step = functools.partial(
        _step, tol=tol, accelerated=accelerated, fancy_rule=fancy_rule, svt=svt
    )
    if svt != "tracked":
        u0 = jnp.zeros(batch + (0, 0), jnp.float32)  # nothing to track
    elif u0 is None:
        u0 = linalg.gram_eigh(z0)[1]
    count = int(np.prod(batch, dtype=np.int64))
    if lanes is not None and lanes < count:
        flat = lambda x: x.reshape((count,) + x.shape[len(batch) :])
        z, iters = _refill_loop(
            step,
            *map(flat, (a0, obs, region, lam, z0, done0, u0)),
            max_iters=max_iters,
            lanes=lanes,
        )
        return z.reshape(a0.shape), iters.reshape(batch)
    inf = jnp.full(batch, jnp.inf, jnp.float32)
    ones = jnp.ones(batch, jnp.float32)
    state = (0, z0, z0, ones, inf, u0, done0, jnp.zeros(batch, jnp.int32))

    def cond(st):
        i, *_, done, _ = st
        return (i < max_iters) & ~jnp.all(done)

    def body(st):
        i, z, z_prev, t, f_prev, u, done, iters = st
        z_new, z_prev_new, t_next, f_new, u_new, conv = step(
            z, z_prev, t, f_prev, u, a0, obs, region, lam
        )
        keep = done[..., None, None]
        return (
            i + 1,
            jnp.where(keep, z, z_new),
            jnp.where(keep, z_prev, z_prev_new),
            jnp.where(done, t, t_next),
            jnp.where(done, f_prev, f_new),
            jnp.where(keep, u, u_new),
            done | conv,
            iters + (~done).astype(jnp.int32),
        )

    _, z, *_, iters = lax.while_loop(cond, body, state)
    return z, iters


def _refill_loop(step, a0, obs, region, lam, z0, done0, u0, *, max_iters, lanes):
    """_prox_loop over [N, m, n] with `lanes` matrices in flight, refilled as they finish."""
    n = a0.shape[0]
    # A matrix with nothing to estimate is its own answer.
    out0 = jnp.where(done0[:, None, None], z0, 0.0)

    def load(idx):
        j = jnp.minimum(idx, n - 1)
        return a0[j], obs[j], region[j], lam[j], z0[j], u0[j]

    idx = jnp.arange(lanes)
    st = (
        idx,
        jnp.asarray(lanes),
        *load(idx),
        z0[:lanes],
        jnp.ones(lanes),
        jnp.full(lanes, jnp.inf),
    )
    st = st + (jnp.zeros(lanes, jnp.int32), out0, jnp.zeros(n, jnp.int32))

    def cond(st):
        return jnp.any(st[0] < n)

    def body(st):
        idx, nxt, a_l, o_l, r_l, lam_l, z, u, z_prev, t, f, it, out, iters = st
        active = idx < n
        z_new, z_prev_new, t_new, f_new, u_new, conv = step(
            z, z_prev, t, f, u, a_l, o_l, r_l, lam_l
        )
        it = it + 1
        skip = done0[jnp.minimum(idx, n - 1)]
        finished = active & (conv | (it >= max_iters) | skip)
        dest = jnp.where(finished & ~skip, idx, n)
        out = out.at[dest].set(z_new, mode="drop")
        iters = iters.at[dest].set(it, mode="drop")
        # Finished lanes take the next matrices in order; past the end they go idle.
        new = nxt + jnp.cumsum(finished) - 1
        idx = jnp.where(finished, jnp.where(new < n, new, n), idx)
        nxt = nxt + jnp.sum(finished)
        fa, fo, fr, fl, fz, fu = load(idx)
        fm = finished[:, None, None]
        return (
            idx,
            nxt,
            jnp.where(fm, fa, a_l),
            jnp.where(fm, fo, o_l),
            jnp.where(fm, fr, r_l),
            jnp.where(finished, fl, lam_l),
            jnp.where(fm, fz, z_new),
            jnp.where(fm, fu, u_new),
            jnp.where(fm, fz, z_prev_new),
            jnp.where(finished, 1.0, t_new),
            jnp.where(finished, jnp.inf, f_new),
            jnp.where(finished, 0, it),
            out,
            iters,
        )

    st = lax.while_loop(cond, body, st)
    return st[-2], st[-1]


# ---------------------------------------------------------------------------------------------
# Soft-Impute


def softimpute(
    a: jax.Array,
    mask: jax.Array,
    *,
    shrinkage: float | jax.Array | None = None,
    max_iters: int = 100,
    tol: float = 1e-3,
    accelerated: bool = False,
    init: jax.Array | None = None,
    lanes: int | None = None,
    svt: str = "tracked",
) -> jax.Array:
    """Soft-Impute (Mazumder, Hastie & Tibshirani 2010) with fancyimpute's semantics.

    Starting from the zero-filled matrix, repeat Z <- SVT_lambda(P_obs(A) + P_missing(Z)) until
    the relative change of Z on the missing entries is below tol (fancyimpute's rule) or
    max_iters is reached; return A on the observed entries and Z on the missing ones. The only
    departures from fancyimpute: sigma_max for the default lambda is exact (fancyimpute uses a
    5-power-iteration randomized SVD), and a matrix with no missing entry stops at once.

    Args:
      a: [..., m, n] matrices with values in [-1, 1]; entries where mask == 0 are ignored.
      mask: [..., m, n] 0/1, 1 = observed.
      shrinkage: lambda, a positive number or one per matrix; None = sigma_max(zero-filled) / 50.
      max_iters: iteration cap per matrix.
      tol: convergence threshold on the relative change of the missing entries.
      accelerated: add FISTA momentum with function-value restarts and warm-start the missing
        entries from the mean of their observed 3x3 neighbours (`neighbour_fill`). Same fixed
        point (the minimiser of lambda*||Z||_* + 0.5*||P_obs(Z - A)||^2), reached in fewer
        iterations; on photo tiles at p = 0.5 about 30 instead of 80 on average.
      init: optional [..., m, n] warm start for the missing entries (default zeros, or
        `neighbour_fill` when accelerated).
      lanes: if set and smaller than the batch, iterate only this many matrices at a time and
        give a lane the next matrix as soon as its own converges: the same iterations (up to
        float rounding), work set by the mean instead of the maximum iteration count (a
        throughput option for large batches on CPU).
      svt: how each iteration's singular-value thresholding is computed: "tracked" (default;
        matrix products only, the Gram eigenbasis carried from one iteration to the next and
        refreshed by rotations, see `linalg.tracked_svt`) or "eigh" (a fresh eigendecomposition
        per iteration). Same algorithm and stopping rule; on photo tiles both stay within
        ~1e-4 of a float64 run of fancyimpute's loop.

    Returns:
      [..., m, n] float32 estimate (observed entries equal to a).

    Raises:
      ValueError: shapes differ or an option is out of range.
    """
    _check_positive("shrinkage", shrinkage)
    a, mask = _check_iterative(
        a, mask, tol=tol, max_iters=max_iters, init=init, lanes=lanes, svt=svt
    )
    return _softimpute(
        a,
        mask,
        shrinkage,
        init,
        max_iters=max_iters,
        tol=tol,
        accelerated=bool(accelerated),
        lanes=lanes,
        svt=svt,
    )[0]


_ITER_STATIC = ("max_iters", "tol", "accelerated", "lanes", "svt")


@functools.partial(jax.jit, static_argnames=_ITER_STATIC)
def _softimpute(a, mask, shrinkage, init, *, max_iters, tol, accelerated, lanes=None, svt):
    obs = (mask > 0).astype(jnp.float32)
    tall, (a0, obs, init) = linalg.to_wide(a * obs, obs, init)
    u0 = None
    if shrinkage is None:
        s, u = linalg.gram_eigh(a0)
        lam = s[..., -1] / 50.0
        if init is None and not accelerated:
            u0 = u  # the loop starts from a0 itself
    else:
        lam = jnp.asarray(shrinkage, jnp.float32)
    if init is None and accelerated:
        init = neighbour_fill(a0, obs)
    z, iters = _prox_loop(
        a0,
        obs,
        lam,
        init,
        max_iters=max_iters,
        tol=tol,
        accelerated=accelerated,
        fancy_rule=True,
        svt=svt,
        lanes=lanes,
        u0=u0,
    )
    out = jnp.where(obs > 0, a0, z)
    return (jnp.swapaxes(out, -1, -2) if tall else out), iters


# ---------------------------------------------------------------------------------------------
# Nuclear-norm minimisation


def nucnorm(
    a: jax.Array,
    mask: jax.Array,
    *,
    mu: float | jax.Array = 1.0,
    max_iters: int = 100,
    tol: float = 1e-3,
    accelerated: bool = True,
    init: jax.Array | None = None,
    lanes: int | None = None,
    svt: str = "tracked",
) -> jax.Array:
    """Nuclear-norm minimisation: argmin_X mu*||X||_* + ||P_obs(X - A)||_F^2.

    The authors solved this per image with cvxpy/SCS and returned X as is (observed entries
    not restored). Halved, it is Soft-Impute's objective with lambda = mu / 2, so we run the
    same singular-value-thresholding step as an accelerated proximal-gradient method (FISTA,
    step 1 = 1/Lipschitz, momentum restarted whenever the objective rises), from the
    zero-filled matrix, until the relative change of X is <= tol or max_iters.

    Args:
      a: [..., m, n] matrices with values in [-1, 1]; entries where mask == 0 are ignored.
      mask: [..., m, n] 0/1, 1 = observed.
      mu: nuclear-norm weight, a positive number or one per matrix.
      max_iters: iteration cap per matrix.
      tol: stop a matrix when ||X_new - X|| <= tol * ||X||. The default leaves the objective
        within about 1e-4 (relative) of the optimum on photo tiles at p = 0.5.
      accelerated: FISTA momentum and the `neighbour_fill` warm start (default); False = plain
        proximal gradient from the zero-filled matrix.
      init: optional [..., m, n] warm start for the missing entries.
      lanes: if set and smaller than the batch, iterate only this many matrices at a time and
        give a lane the next matrix as soon as its own converges: the same iterations (up to
        float rounding), work set by the mean instead of the maximum iteration count (a
        throughput option for large batches on CPU).
      svt: "tracked" (default) or "eigh", as in `softimpute`.

    Returns:
      [..., m, n] float32 estimate X.

    Raises:
      ValueError: shapes differ or an option is out of range.
    """
    _check_positive("mu", mu)
    a, mask = _check_iterative(
        a, mask, tol=tol, max_iters=max_iters, init=init, lanes=lanes, svt=svt
    )
    out, _ = _nucnorm(
        a,
        mask,
        mu,
        init,
        max_iters=max_iters,
        tol=tol,
        accelerated=bool(accelerated),
        lanes=lanes,
        svt=svt,
    )
    return out


@functools.partial(jax.jit, static_argnames=_ITER_STATIC)
def _nucnorm(a, mask, mu, init, *, max_iters, tol, accelerated, lanes=None, svt):
    obs = (mask > 0).astype(jnp.float32)
    tall, (a0, obs, init) = linalg.to_wide(a * obs, obs, init)
    lam = 0.5 * jnp.asarray(mu, jnp.float32)
    if init is None and accelerated:
        init = neighbour_fill(a0, obs)
    z, iters = _prox_loop(
        a0,
        obs,
        lam,
        init,
        max_iters=max_iters,
        tol=tol,
        accelerated=accelerated,
        fancy_rule=False,
        svt=svt,
        lanes=lanes,
    )
    return (jnp.swapaxes(z, -1, -2) if tall else z), iters


def nucnorm_objective(x: jax.Array, a: jax.Array, mask: jax.Array, *, mu: float = 1.0):
    """mu*||X||_* + ||P_obs(X - A)||_F^2 per matrix, [...] (for checks and benchmarks)."""
    s = jnp.linalg.svd(jnp.asarray(x, jnp.float32), compute_uv=False)
    r = jnp.asarray(mask) * (jnp.asarray(x) - jnp.asarray(a))
    return mu * jnp.sum(s, -1) + jnp.sum(r**2, axis=(-2, -1))
