"""Matrix-estimation solvers: USVT, Soft-Impute and nuclear-norm minimisation.

All three take a batch of matrices a [..., m, n] (values in [-1, 1]; entries where mask == 0 are
ignored) and a same-shape 0/1 mask (1 = observed), and return the unclipped float32 estimate
[..., m, n]. They are pure, jit-compatible and natively batched (no Python loop over matrices or
iterations, no host callbacks), so they can run inside a jitted training step. The iterative
solvers stop per matrix: a matrix that has converged is frozen while the rest of the batch keeps
iterating in the same `lax.while_loop`.

Semantics follow the ME-Net authors' code (docs/method.md §2):

* `usvt`: rank-truncated SVD of the zero-filled matrix divided by the observed fraction
  (docs/method.md §2.3).
* `softimpute`: fancyimpute's SoftImpute (lambda = sigma_max / 50, <= 100 iterations, relative
  change on the missing entries < 1e-3), observed entries returned unchanged. `accelerated=True`
  adds FISTA momentum with gradient-mapping restarts (same fixed point, fewer iterations;
  docs/method.md §2.4).
* `nucnorm`: argmin_X mu*||X||_* + ||P_obs(X - A)||_F^2 (what the authors solved with cvxpy/SCS),
  by accelerated proximal gradient (FISTA with restarts) on that objective (docs/method.md §2.5).

The iterative two can also return how many iterations each matrix took
(`return_iterations=True`). How each iteration's singular-value thresholding is computed lives
in `linalg`.

`differentiable=True` (all three) gives the same estimate with an exact reverse-mode gradient in
the image for the fixed mask (`gradients`, docs/method.md §5.6): USVT's spectral derivative with
degenerate pairs at the rank cut handled, and the implicit-function gradient of the iterative
solvers' fixed point. Off (the default), nothing changes: USVT differentiates through `eigh`
(inf/NaN on degenerate spectra) and the iterative solvers' `lax.while_loop` cannot be
reverse-differentiated at all.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from menet_jax.me import gradients, linalg
from menet_jax.me.arguments import check_iterative, check_pair, check_positive

_F32_EPS = float(np.finfo(np.float32).eps)


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
    differentiable: bool = False,
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
        p = 0.5 it often keeps none, i.e. returns a grey image); or a positive number, keep
        singular values >= that value.
      eta: the Chatterjee rule's slack.
      differentiable: give the estimate an exact gradient in `a` for this fixed mask
        (`gradients.truncation`): the derivative of the truncation with 1 / (g_i - g_j) set to
        0 for Gram eigenvalue pairs at the cut closer than `gradients.GAP_RTOL` * g_max (there
        the kept subspace is held fixed), so it stays finite on degenerate spectra. Same value.

    Returns:
      [..., m, n] float32 unclipped estimate.

    Raises:
      ValueError: shapes differ, rank_fraction outside (0, 1] or an unknown threshold.
    """
    a, mask = check_pair(a, mask)
    check_positive("rank_fraction", rank_fraction, upper=1.0)
    if threshold is not None and not isinstance(threshold, str):
        check_positive("threshold", threshold)
    elif isinstance(threshold, str) and threshold != "chatterjee":
        raise ValueError(
            f"threshold must be None, 'chatterjee' or a number > 0; got {threshold!r}."
        )
    return _usvt(
        a,
        mask,
        rank_fraction=rank_fraction,
        threshold=threshold,
        eta=eta,
        differentiable=bool(differentiable),
    )


@functools.partial(jax.jit, static_argnames=("rank_fraction", "threshold", "eta", "differentiable"))
def _usvt(a, mask, *, rank_fraction, threshold, eta, differentiable=False):
    m, n = a.shape[-2:]
    if differentiable:
        mask = lax.stop_gradient(mask)
    p_hat = observed_fraction(mask)
    tall, (a0,) = linalg.to_wide(a * mask)
    s, u = linalg.gram_eigh(lax.stop_gradient(a0) if differentiable else a0)  # ascending
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
    if differentiable:
        x = gradients.truncation(a0, u, s, factor)
    else:
        x = linalg.spectral_filter(a0, u, factor)
    if tall:
        x = jnp.swapaxes(x, -1, -2)
    # An all-missing matrix is all zeros, so any positive divisor returns zeros.
    return x / jnp.maximum(p_hat, 1.0 / (m * n))[..., None, None]


def neighbour_fill(a0: jax.Array, obs: jax.Array, *, sweeps: int = 1) -> jax.Array:
    """A cheap warm start for the missing entries of image matrices.

    Each entry gets the average of the observed entries in its 3x3 neighbourhood (0 where there
    are none; zero padding at the edges), then `sweeps` times the missing entries are replaced
    by the 3x3 average of the filled matrix. The accelerated solvers use one sweep (BENCHMARKS.md
    compares the warm starts).
    """

    def box(x):
        pad = [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)]
        xp = jnp.pad(x, pad)
        n = x.shape[-1]
        rows = xp[..., :-2, :] + xp[..., 1:-1, :] + xp[..., 2:, :]
        return rows[..., :, :n] + rows[..., :, 1 : n + 1] + rows[..., :, 2:]

    fill = box(a0) / jnp.maximum(box(obs), 1.0)
    if sweeps:
        count = box(jnp.ones(a0.shape[-2:], a0.dtype))
        for _ in range(sweeps):
            fill = box(jnp.where(obs > 0, a0, fill)) / count
    return fill


# ---------------------------------------------------------------------------------------------
# Proximal-gradient core shared by Soft-Impute and nuclear-norm minimisation


def _step(st, data, *, tol, accelerated, fancy_rule, svt):
    """One (accelerated) proximal-gradient step for every matrix.

    Args:
      st: per-matrix state {"z", "basis"} plus {"z_prev", "t"} when accelerated; basis is the
        tracked basis (`linalg.tracked_svt`) when svt == "tracked" (empty for "eigh").
      data: per-matrix constants {"a0", "obs", "lam"}.

    Returns:
      (new_st, conv): the state after the step and which matrices have converged.
    """
    z, a0, obs, lam = st["z"], data["a0"], data["obs"], data["lam"]
    new = {}
    if accelerated:
        t = st["t"]
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        beta = ((t - 1.0) / t_next)[..., None, None]
        y = z + beta * (z - st["z_prev"])
    else:
        y = z
    x = jnp.where(obs > 0, a0, y)
    if svt == "tracked":
        z_new, _, new["basis"] = linalg.tracked_svt(x, lam, st["basis"])
    else:
        z_new, _ = linalg.svt(x, lam)
        new["basis"] = st["basis"]
    change = z_new - z
    if fancy_rule:  # fancyimpute measures the missing entries only
        change, z = change * (1.0 - obs), z * (1.0 - obs)
    diff = jnp.sqrt(jnp.sum(change**2, axis=(-2, -1)))
    old = jnp.sqrt(jnp.sum(z**2, axis=(-2, -1)))
    if fancy_rule:
        edge = (old == 0) | ((old < _F32_EPS) & (diff > _F32_EPS))
        conv = ~edge & (diff < tol * old)
    else:
        conv = diff <= tol * old
    if accelerated:
        # Gradient-mapping restart (O'Donoghue & Candes 2015): drop the momentum when the step
        # y -> z_new points against the last move z -> z_new.
        restart = jnp.sum((y - z_new) * (z_new - st["z"]), axis=(-2, -1)) > 0
        new["t"] = jnp.where(restart, 1.0, t_next)
        new["z_prev"] = jnp.where(restart[..., None, None], z_new, st["z"])
    new["z"] = z_new
    return new, conv


def _initial_state(z0, basis, accelerated):
    st = {"z": z0, "basis": basis}
    if accelerated:
        st.update(z_prev=z0, t=jnp.ones(z0.shape[:-2], jnp.float32))
    return st


def _select(pred, on_true, on_false):
    """Per-matrix jnp.where over two state dicts (pred has the batch shape)."""
    return jax.tree.map(
        lambda x, y: jnp.where(pred.reshape(pred.shape + (1,) * (x.ndim - pred.ndim)), x, y),
        on_true,
        on_false,
    )


def _start(a, mask, init, accelerated):
    """The setup Soft-Impute and the nuclear norm share.

    Returns:
      (tall, a0, obs, z0): whether the matrices were transposed to wide, the zero-filled wide
      matrices, their 0/1 masks, and the loop's first iterate (a0 with the missing entries
      from init, or from `neighbour_fill` when accelerated and init is None).
    """
    obs = (mask > 0).astype(jnp.float32)
    tall, (a0, obs, init) = linalg.to_wide(a * obs, obs, init)
    if init is None and accelerated:
        init = neighbour_fill(a0, obs)
    z0 = a0 if init is None else jnp.where(obs > 0, a0, init)
    return tall, a0, obs, z0


def _differentiable_start(a, mask, init, accelerated):
    """`_start` for `differentiable=True`: the loop's setup with no gradient, and a0 with one.

    Returns:
      (tall, a0, obs, z0) as `_start`; only a0 carries a gradient (to a). The mask is fixed,
      and the warm start does not move a fixed point.
    """
    mask, init = lax.stop_gradient(mask), lax.stop_gradient(init)
    tall, _, obs, z0 = _start(lax.stop_gradient(a), mask, init, accelerated)
    _, (a0,) = linalg.to_wide(a * (mask > 0).astype(jnp.float32))
    return tall, a0, obs, z0


def _prox_loop(
    a0, obs, lam, z0, *, max_iters, tol, accelerated, fancy_rule, svt, lanes=None, u0=None
):
    """Iterates Z <- SVT_lam(P_obs(A) + P_miss(Y)) per matrix until converged.

    Y = Z (Soft-Impute, plain proximal gradient) or Z + beta (Z - Z_prev) (FISTA) with the
    momentum restarted whenever the step turns against the last move (gradient-mapping
    restart). Both converge to the minimiser of lam*||Z||_* + 0.5*||P_obs(Z - A)||^2.

    fancy_rule: convergence as fancyimpute measures it (relative change of the missing entries,
    never converged while they are all zero) instead of the relative change of the whole Z.
    svt: "tracked" (`linalg.tracked_svt`, matrix products only, the basis carried from one
    iteration to the next) or "eigh" (`linalg.svt`, a LAPACK/cuSOLVER eigendecomposition per
    iteration).
    lanes: iterate only this many matrices at a time, refilling a lane with the next matrix as
    soon as its matrix converges (same iterations; the work follows the mean iteration count
    instead of the batch's maximum).
    z0: the first iterate (from `_start`).
    u0: the Gram eigenvectors of z0 if the caller already has them.

    Returns:
      (z, iters): the estimates and each matrix's iteration count.
    """
    batch = a0.shape[:-2]
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), batch)
    # Nothing to estimate (no missing entry) means nothing changes: done from the start.
    if fancy_rule:
        done0 = jnp.sum(1.0 - obs, axis=(-2, -1)) == 0
    else:
        done0 = jnp.zeros(batch, bool)
    step = functools.partial(
        _step, tol=tol, accelerated=accelerated, fancy_rule=fancy_rule, svt=svt
    )
    if svt != "tracked":
        basis = jnp.zeros(batch + (0, 0), jnp.float32)  # nothing to track
    else:
        basis = jnp.swapaxes(linalg.gram_eigh(z0)[1] if u0 is None else u0, -1, -2)
    data = {"a0": a0, "obs": obs, "lam": lam}
    st0 = _initial_state(z0, basis, accelerated)
    count = int(np.prod(batch, dtype=np.int64))
    if lanes is not None and lanes < count:
        flat = lambda x: x.reshape((count,) + x.shape[len(batch) :])  # noqa: E731
        z, iters = _refill_loop(
            step,
            jax.tree.map(flat, data),
            jax.tree.map(flat, st0),
            flat(done0),
            max_iters=max_iters,
            lanes=lanes,
        )
        return z.reshape(a0.shape), iters.reshape(batch)

    def cond(carry):
        i, _, done, _ = carry
        return (i < max_iters) & ~jnp.all(done)

    def body(carry):
        i, st, done, iters = carry
        new, conv = step(st, data)
        return i + 1, _select(done, st, new), done | conv, iters + (~done).astype(jnp.int32)

    carry = (0, st0, done0, jnp.zeros(batch, jnp.int32))
    _, st, _, iters = lax.while_loop(cond, body, carry)
    return st["z"], iters


def _refill_loop(step, data, st0, done0, *, max_iters, lanes):
    """_prox_loop over [N, m, n] with `lanes` matrices in flight, refilled as they finish."""
    n = done0.shape[0]
    # A matrix with nothing to estimate is its own answer.
    out0 = jnp.where(done0[:, None, None], st0["z"], 0.0)

    def load(idx):
        j = jnp.minimum(idx, n - 1)
        return jax.tree.map(lambda x: x[j], (data, st0))

    idx = jnp.arange(lanes)
    carry = (idx, jnp.asarray(lanes), *load(idx), jnp.zeros(lanes, jnp.int32), out0)
    carry = carry + (jnp.zeros(n, jnp.int32),)

    def cond(carry):
        return jnp.any(carry[0] < n)

    def body(carry):
        idx, nxt, d_l, st, it, out, iters = carry
        active = idx < n
        new, conv = step(st, d_l)
        it = it + 1
        skip = done0[jnp.minimum(idx, n - 1)]
        finished = active & (conv | (it >= max_iters) | skip)
        dest = jnp.where(finished & ~skip, idx, n)
        out = out.at[dest].set(new["z"], mode="drop")
        iters = iters.at[dest].set(it, mode="drop")
        # Finished lanes take the next matrices in order; past the end they go idle.
        nxt_idx = nxt + jnp.cumsum(finished) - 1
        idx = jnp.where(finished, jnp.where(nxt_idx < n, nxt_idx, n), idx)
        nxt = nxt + jnp.sum(finished)
        fresh_d, fresh_st = load(idx)
        return (
            idx,
            nxt,
            _select(finished, fresh_d, d_l),
            _select(finished, fresh_st, new),
            jnp.where(finished, 0, it),
            out,
            iters,
        )

    carry = lax.while_loop(cond, body, carry)
    return carry[-2], carry[-1]


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
    return_iterations: bool = False,
    differentiable: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
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
      accelerated: add FISTA momentum with gradient-mapping restarts and warm-start the
        missing entries from `neighbour_fill` (the mean of their observed 3x3 neighbours,
        smoothed once). Same fixed point (the minimiser of
        lambda*||Z||_* + 0.5*||P_obs(Z - A)||^2), reached in fewer iterations (BENCHMARKS.md).
      init: optional [..., m, n] warm start for the missing entries (default zeros, or
        `neighbour_fill` when accelerated).
      lanes: if set and smaller than the batch, iterate only this many matrices at a time and
        give a lane the next matrix as soon as its own converges: the same iterations (up to
        float rounding), work set by the mean instead of the maximum iteration count (a
        throughput option for large batches on CPU).
      svt: how each iteration's singular-value thresholding is computed: "tracked" (default;
        matrix products only, the Gram eigenbasis carried from one iteration to the next and
        refreshed by rotations, see `linalg.tracked_svt`) or "eigh" (a fresh eigendecomposition
        per iteration). Same algorithm and stopping rule; both stay close to a float64 run of
        fancyimpute's loop (BENCHMARKS.md gives the errors). Call it on one device's
        matrices: the training step runs it per device (`sprime.per_device_reconstruction`),
        since over a sharded batch the loop's stopping test would be a cross-device reduction
        every iteration. (On a CPU backend with several devices the eigendecompositions go
        to LAPACK one matrix at a time, `linalg.eigh`: the batched kernel can wait forever
        there.)
      return_iterations: also return each matrix's iteration count.
      differentiable: give the estimate an exact reverse-mode gradient in `a` (and in a traced
        shrinkage) for this fixed mask: the implicit-function gradient of the fixed point
        Z = SVT_lambda(P_obs(A) + P_missing(Z)), through lambda = sigma_max / 50 too
        (`gradients.fixed_point`), linearised at the returned estimate, so a tighter `tol`
        brings it nearer the converged fixed point's. Same estimate; the backward pass costs one
        eigendecomposition and a conjugate-gradient solve of matrix products per matrix.

    Returns:
      [..., m, n] float32 estimate (observed entries equal to a); with return_iterations,
      (estimate, iterations) where iterations [...] int32 counts the SVT steps each matrix took,
      the one that met the stopping rule included (max_iters if it never did; 0 for a matrix
      with no missing entry).

    Raises:
      ValueError: shapes differ or an option is out of range.
    """
    check_positive("shrinkage", shrinkage)
    a, mask, options = check_iterative(
        a, mask, init, max_iters, tol, accelerated, lanes, svt, differentiable
    )
    out, iterations = _softimpute(a, mask, shrinkage, init, **options)
    return (out, iterations) if return_iterations else out


_ITER_STATIC = ("max_iters", "tol", "accelerated", "lanes", "svt", "differentiable")


@functools.partial(jax.jit, static_argnames=_ITER_STATIC)
def _softimpute(
    a, mask, shrinkage, init, *, max_iters, tol, accelerated, lanes=None, svt, differentiable=False
):
    start = _differentiable_start if differentiable else _start
    tall, a0, obs, z0 = start(a, mask, init, accelerated)
    # z0's Gram eigenvectors: the tracked SVT's starting basis.
    s, u0 = linalg.gram_eigh(z0)
    if shrinkage is not None:
        lam = jnp.asarray(shrinkage, jnp.float32)
    else:
        if init is None and not accelerated:
            sigma = s[..., -1]  # z0 is a0, the zero-filled matrix itself (see _start)
        else:
            a0_value = lax.stop_gradient(a0) if differentiable else a0
            sigma = linalg.top_singular_value(a0_value, u0[..., -1])
        if differentiable:
            sigma = gradients.top_singular_value(a0, sigma)
        lam = sigma / 50.0
    options = {"max_iters": max_iters, "tol": tol, "svt": svt, "lanes": lanes}
    if differentiable:
        solve = functools.partial(_prox_loop, accelerated=accelerated, fancy_rule=True, **options)
        lam = jnp.broadcast_to(lam, a0.shape[:-2])
        out, iters = gradients.fixed_point(solve, True, a0, lam, obs, z0, u0)
    else:
        z, iters = _prox_loop(
            a0, obs, lam, z0, accelerated=accelerated, fancy_rule=True, u0=u0, **options
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
    return_iterations: bool = False,
    differentiable: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Nuclear-norm minimisation: argmin_X mu*||X||_* + ||P_obs(X - A)||_F^2.

    The authors solved this per image with cvxpy/SCS and returned X as is (observed entries
    not restored). Halved, it is Soft-Impute's objective with lambda = mu / 2, so we run the
    same singular-value-thresholding step as an accelerated proximal-gradient method (FISTA,
    step 1 = 1/Lipschitz, momentum restarted when a step turns against the last move), from the
    zero-filled matrix, until the relative change of X is <= tol or max_iters.

    Args:
      a: [..., m, n] matrices with values in [-1, 1]; entries where mask == 0 are ignored.
      mask: [..., m, n] 0/1, 1 = observed.
      mu: nuclear-norm weight, a positive number or one per matrix.
      max_iters: iteration cap per matrix.
      tol: stop a matrix when ||X_new - X|| <= tol * ||X||. The default leaves the objective
        well within 1e-3 (relative) of cvxpy's optimum on photo tiles (BENCHMARKS.md).
      accelerated: FISTA momentum and the `neighbour_fill` warm start (default); False = plain
        proximal gradient from the zero-filled matrix.
      init: optional [..., m, n] warm start for the missing entries.
      lanes: if set and smaller than the batch, iterate only this many matrices at a time and
        give a lane the next matrix as soon as its own converges: the same iterations (up to
        float rounding), work set by the mean instead of the maximum iteration count (a
        throughput option for large batches on CPU).
      svt: "tracked" (default) or "eigh", as in `softimpute`.
      return_iterations: also return each matrix's iteration count.
      differentiable: give X an exact reverse-mode gradient in `a` (and in a traced mu) for
        this fixed mask: the implicit-function gradient of the minimiser, i.e. of the fixed
        point X = SVT_{mu/2}(P_obs(A) + P_missing(X)), linearised at the returned X
        (`gradients.fixed_point`). Same estimate.

    Returns:
      [..., m, n] float32 estimate X; with return_iterations, (X, iterations) where iterations
      [...] int32 counts the proximal steps each matrix took, the one that met the stopping rule
      included (max_iters if it never did).

    Raises:
      ValueError: shapes differ or an option is out of range.
    """
    check_positive("mu", mu)
    a, mask, options = check_iterative(
        a, mask, init, max_iters, tol, accelerated, lanes, svt, differentiable
    )
    out, iterations = _nucnorm(a, mask, mu, init, **options)
    return (out, iterations) if return_iterations else out


@functools.partial(jax.jit, static_argnames=_ITER_STATIC)
def _nucnorm(
    a, mask, mu, init, *, max_iters, tol, accelerated, lanes=None, svt, differentiable=False
):
    start = _differentiable_start if differentiable else _start
    tall, a0, obs, z0 = start(a, mask, init, accelerated)
    lam = 0.5 * jnp.asarray(mu, jnp.float32)
    options = {"max_iters": max_iters, "tol": tol, "svt": svt, "lanes": lanes}
    if differentiable:
        solve = functools.partial(_prox_loop, accelerated=accelerated, fancy_rule=False, **options)
        lam = jnp.broadcast_to(lam, a0.shape[:-2])
        z, iters = gradients.fixed_point(solve, False, a0, lam, obs, z0, None)
    else:
        z, iters = _prox_loop(
            a0, obs, lam, z0, accelerated=accelerated, fancy_rule=False, **options
        )
    return (jnp.swapaxes(z, -1, -2) if tall else z), iters


def nucnorm_objective(x: jax.Array, a: jax.Array, mask: jax.Array, *, mu: float = 1.0):
    """mu*||X||_* + ||P_obs(X - A)||_F^2 per matrix, [...] (for checks and benchmarks)."""
    s = jnp.linalg.svd(jnp.asarray(x, jnp.float32), compute_uv=False)
    r = jnp.asarray(mask) * (jnp.asarray(x) - jnp.asarray(a))
    return mu * jnp.sum(s, -1) + jnp.sum(r**2, axis=(-2, -1))
