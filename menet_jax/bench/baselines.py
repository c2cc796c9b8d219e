"""The authors' one-image-at-a-time matrix estimation, as `bench me` compares against it.

ME-Net's code solved each image on its own: USVT with a full `np.linalg.svd`, Soft-Impute with
fancyimpute's `SoftImpute`, and the nuclear norm with cvxpy and SCS. Each baseline here takes one
[m, n] float64 matrix and its 0/1 mask and returns the estimate. fancyimpute, cvxpy and their
dependencies come with the `[bench]` extra; `missing(kind)` says why a baseline cannot run, and
the benchmark then skips it. `float64_softimpute` is the accuracy reference for the JAX
Soft-Impute, `cvxpy_tv` (with `tv_objective64`) that for the TV minimisation (neither is a
baseline: they are timed nowhere).
"""

import inspect
import time
import warnings
from collections.abc import Callable

import numpy as np


def numpy_usvt(a: np.ndarray, mask: np.ndarray, rank_fraction: float = 0.8) -> np.ndarray:
    """USVT as the authors coded it (full np.linalg.svd, S filled in a loop), one matrix."""
    h, w = a.shape
    p_obs = len(mask[mask == 1]) / (h * w)
    u, sigma, v = np.linalg.svd(a * mask)
    s = np.zeros((h, w))
    for j in range(int(rank_fraction * h)):
        s[j][j] = sigma[j]
    return np.dot(np.dot(u, s), v) / p_obs


def fancy_softimpute(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """fancyimpute's SoftImpute with its defaults, one matrix (missing entries as NaN)."""
    from fancyimpute import SoftImpute

    x = np.where(mask > 0, a, np.nan).astype(np.float64)
    with warnings.catch_warnings():
        # fancyimpute 0.7 passes check_array(force_all_finite=...), deprecated since
        # scikit-learn 1.6; the warning is about fancyimpute, not about this run.
        warnings.simplefilter("ignore", FutureWarning)
        return SoftImpute(verbose=False).fit_transform(x)


def cvxpy_nucnorm(a: np.ndarray, mask: np.ndarray, mu: float = 1.0) -> np.ndarray:
    """argmin_X mu*||X||_* + ||P_obs(X - A)||_F^2 by cvxpy + SCS, one matrix."""
    import cvxpy as cp

    x = cp.Variable(a.shape)
    obj = cp.Minimize(mu * cp.norm(x, "nuc") + cp.sum_squares(cp.multiply(mask, x - a)))
    cp.Problem(obj).solve(solver=cp.SCS)
    return np.asarray(x.value)


def float64_softimpute(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """fancyimpute's SoftImpute loop in float64 with an exact sigma_max (the accuracy reference
    for the exact mode: fancyimpute itself estimates sigma_max by a randomized SVD)."""
    obs = mask > 0
    x = np.where(obs, a, 0.0).astype(np.float64)
    lam = np.linalg.svd(x, compute_uv=False)[0] / 50
    for _ in range(100):
        u, sv, vt = np.linalg.svd(x, full_matrices=False)
        z = (u * np.maximum(sv - lam, 0)) @ vt
        old = np.sqrt(np.sum(x[~obs] ** 2))
        converged = old > 0 and np.sqrt(np.sum((x[~obs] - z[~obs]) ** 2)) / old < 1e-3
        x[~obs] = z[~obs]
        if converged:
            break
    return x


def tv_objective64(u: np.ndarray, x: np.ndarray, mask: np.ndarray, weight: float) -> float:
    """0.5 * sum_kept (u - x)^2 + weight * isotropic TV of one [H, W] channel (the objective of
    docs/method.md §2.7)."""
    gx, gy = np.zeros_like(u), np.zeros_like(u)
    gx[:, :-1] = u[:, 1:] - u[:, :-1]
    gy[:-1, :] = u[1:, :] - u[:-1, :]
    return 0.5 * np.sum(mask * (u - x) ** 2) + weight * np.sum(np.sqrt(gx**2 + gy**2))


def cvxpy_tv(x: np.ndarray, mask: np.ndarray, weight: float) -> np.ndarray:
    """The minimiser of `tv_objective64` for one [H, W] channel, by cvxpy's interior point."""
    import cvxpy as cp

    u = cp.Variable(x.shape)
    gx, gy = u[:, 1:] - u[:, :-1], u[1:, :] - u[:-1, :]
    inner = cp.vstack([cp.vec(gx[:-1, :], order="C"), cp.vec(gy[:, :-1], order="C")])
    tv = cp.sum(cp.norm(inner, 2, axis=0)) + cp.sum(cp.abs(gx[-1, :])) + cp.sum(cp.abs(gy[:, -1]))
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(cp.multiply(mask, u - x)) + weight * tv)).solve(
        solver=cp.CLARABEL
    )
    return np.asarray(u.value)


# kind -> (library, one-matrix solver); a kind is also the JAX solver family it is compared with.
BASELINES: dict[str, tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = {
    "usvt": ("numpy", numpy_usvt),
    "softimpute": ("fancyimpute", fancy_softimpute),
    "nucnorm": ("cvxpy", cvxpy_nucnorm),
}


def missing(kind: str) -> str | None:
    """Why the baseline `kind` cannot run here (a sentence), or None if it can."""
    lib = BASELINES[kind][0]
    try:
        __import__(lib)
    except Exception:  # noqa: BLE001 - any import failure means "skip this baseline"
        return f"{lib} is not importable (pip install -e '.[bench]')."
    if lib == "fancyimpute":
        from sklearn.utils import check_array

        if "force_all_finite" not in inspect.signature(check_array).parameters:
            return (
                "fancyimpute 0.7 calls check_array(force_all_finite=...), which scikit-learn "
                ">= 1.8 removed; the [bench] extra installs scikit-learn < 1.8."
            )
    return None


def time_baseline(fn, a: np.ndarray, m: np.ndarray, warm: bool = True) -> tuple[float, np.ndarray]:
    """Images per second of fn over the matrices a[i], m[i] one by one, and the estimates."""
    a = np.asarray(a, np.float64)
    m = np.asarray(m, np.float64)
    if warm:
        fn(a[0], m[0])  # warm imports
    t0 = time.perf_counter()
    out = np.stack([fn(a[i], m[i]) for i in range(a.shape[0])])
    return a.shape[0] / (time.perf_counter() - t0), out
