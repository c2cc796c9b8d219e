"""`python -m menet_jax.bench me`: ME solver throughput vs the authors' per-image code.

Prints `name: value` lines: images/s of each JAX solver on CIFAR-shaped 32x96 matrices ([R|G|B]
of 32x32 crops of real skimage.data photos, in [-1, 1]) at p = 0.5 on the current backend, each
solver's reconstruction PSNR, and, when importable, the authors' one-image-at-a-time approach on
the same matrices (numpy USVT with np.linalg.svd as coded, fancyimpute.SoftImpute, cvxpy + SCS
nuclear norm) with the speed ratios.
"""

import argparse
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.me import masks, photos, solvers
from menet_jax.me.reconstruct import images_to_matrices, matrices_to_images

JAX_SOLVERS = {
    "usvt": lambda a, m, lanes: solvers.usvt(a, m),
    "softimpute": lambda a, m, lanes: solvers.softimpute(a, m, lanes=lanes),
    "softimpute_acc": lambda a, m, lanes: solvers.softimpute(a, m, accelerated=True, lanes=lanes),
    "nucnorm": lambda a, m, lanes: solvers.nucnorm(a, m, lanes=lanes),
}
# Which authors' baseline each JAX solver is compared with.
BASELINE_OF = {
    "usvt": "usvt",
    "softimpute": "softimpute",
    "softimpute_acc": "softimpute",
    "nucnorm": "nucnorm",
}


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over images of the PSNR (dB) between images in [0, 1]."""
    mse = np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2, axis=(-2, -1))
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def to_images(est: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Clipped [-1, 1] concat-layout estimates -> images in [0, 1]."""
    out = (np.clip(est, -1, 1) + 1) / 2
    return np.asarray(matrices_to_images(jnp.asarray(out), shape, "concat"))


# --- the authors' one-image-at-a-time approach -------------------------------------------------


def numpy_usvt(a: np.ndarray, mask: np.ndarray, rank_fraction: float = 0.8) -> np.ndarray:
    """USVT as the authors coded it (full np.linalg.svd, S filled in a loop), one matrix."""
    h, w = a.shape
    p_obs = len(mask[mask == 1]) / (h * w)
    u, sigma, v = np.linalg.svd(a * mask)
    s = np.zeros((h, w))
    for j in range(int(rank_fraction * h)):
        s[j][j] = sigma[j]
    return np.dot(np.dot(u, s), v) / p_obs


def _patch_fancyimpute() -> None:
    """fancyimpute 0.7 passes check_array(force_all_finite=...), which scikit-learn >= 1.8
    renamed ensure_all_finite; translate the keyword so the unchanged algorithm runs."""
    import fancyimpute.soft_impute
    import fancyimpute.solver
    from sklearn.utils import check_array

    def compat(x, force_all_finite=True, **kw):
        return check_array(x, ensure_all_finite=force_all_finite, **kw)

    for mod in (fancyimpute.solver, fancyimpute.soft_impute):
        mod.check_array = compat


def fancy_softimpute(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import inspect

    from fancyimpute import SoftImpute
    from sklearn.utils import check_array

    if "force_all_finite" not in inspect.signature(check_array).parameters:
        _patch_fancyimpute()

    x = np.where(mask > 0, a, np.nan).astype(np.float64)
    return SoftImpute(verbose=False).fit_transform(x)


def cvxpy_nucnorm(a: np.ndarray, mask: np.ndarray, mu: float = 1.0) -> np.ndarray:
    import cvxpy as cp

    x = cp.Variable(a.shape)
    obj = cp.Minimize(mu * cp.norm(x, "nuc") + cp.sum_squares(cp.multiply(mask, x - a)))
    cp.Problem(obj).solve(solver=cp.SCS)
    return np.asarray(x.value)


BASELINES: dict[str, tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = {
    "usvt": ("numpy", numpy_usvt),
    "softimpute": ("fancyimpute", fancy_softimpute),
    "nucnorm": ("cvxpy", cvxpy_nucnorm),
}


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 - any import failure means "skip this baseline"
        return False


def _time_jax(fn, a, m, batch: int) -> tuple[float, np.ndarray]:
    n = a.shape[0]
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(a[:batch], m[:batch]))  # compile
    outs = []
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        chunk = slice(i, min(i + batch, n))
        if a[chunk].shape[0] != batch:  # keep one compiled shape: pad the last chunk
            pad = batch - a[chunk].shape[0]
            aa = jnp.concatenate([a[chunk], a[:pad]])
            mm = jnp.concatenate([m[chunk], m[:pad]])
            outs.append(jax.block_until_ready(jitted(aa, mm))[: batch - pad])
        else:
            outs.append(jax.block_until_ready(jitted(a[chunk], m[chunk])))
    dt = time.perf_counter() - t0
    return n / dt, np.concatenate([np.asarray(o) for o in outs])


def _time_baseline(fn, a: np.ndarray, m: np.ndarray) -> tuple[float, np.ndarray]:
    a = np.asarray(a, np.float64)
    m = np.asarray(m, np.float64)
    fn(a[0], m[0])  # warm imports
    t0 = time.perf_counter()
    out = np.stack([fn(a[i], m[i]) for i in range(a.shape[0])])
    return a.shape[0] / (time.perf_counter() - t0), out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m menet_jax.bench me", description=__doc__)
    ap.add_argument("--num-images", type=int, default=1024, help="images per JAX solver")
    ap.add_argument("--batch", type=int, default=256, help="JAX batch size")
    ap.add_argument(
        "--lanes",
        type=int,
        default=128,
        help="iterative solvers: matrices in flight per batch (refilled as they converge); "
        "0 = the whole batch",
    )
    ap.add_argument("--p", type=float, default=0.5, help="observation probability")
    ap.add_argument("--solvers", default=",".join(JAX_SOLVERS), help="comma-separated")
    ap.add_argument("--baseline-images", type=int, default=256, help="numpy USVT images")
    ap.add_argument("--fancy-images", type=int, default=64, help="fancyimpute images")
    ap.add_argument("--cvxpy-images", type=int, default=6, help="cvxpy/SCS images")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = [s for s in args.solvers.split(",") if s]
    for s in names:
        if s not in JAX_SOLVERS:
            raise SystemExit(f"--solvers: unknown solver {s!r}; allowed: {sorted(JAX_SOLVERS)}.")
    if args.num_images < 1 or args.batch < 1:
        raise SystemExit("--num-images and --batch must be >= 1.")
    masks.check_p(args.p)
    batch = min(args.batch, args.num_images)

    images = photos.photo_tiles(args.num_images, seed=args.seed)
    a = images_to_matrices(2.0 * jnp.asarray(images) - 1.0, "concat")
    key = jax.random.fold_in(jax.random.key(args.seed), 1)
    m = images_to_matrices(masks.sample_mask(key, images.shape, args.p), "concat")
    a = a * m
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")
    print(f"matrices: {args.num_images} x {a.shape[1]}x{a.shape[2]} photo tiles, p={args.p}")
    print(f"psnr_zero_fill: {psnr(to_images(np.asarray(a), images.shape), images):.2f}")

    n_base = {
        "usvt": args.baseline_images,
        "softimpute": args.fancy_images,
        "nucnorm": args.cvxpy_images,
    }
    base_results = {}
    if not args.no_baselines:
        for kind in sorted({BASELINE_OF[s] for s in names}):
            lib, fn = BASELINES[kind]
            n = min(n_base[kind], args.num_images)
            if n < 1 or not _importable(lib):
                print(f"{lib}_{kind}_img_per_s: skipped")
                continue
            rate, out = _time_baseline(fn, np.asarray(a[:n]), np.asarray(m[:n]))
            base_results[kind] = (rate, out, n)
            print(f"{lib}_{kind}_img_per_s: {rate:.1f}")
            print(f"{lib}_{kind}_psnr: {psnr(to_images(out, images[:n].shape), images[:n]):.2f}")

    lanes = args.lanes if 0 < args.lanes < batch else None
    print(f"jax_batch: {batch}")
    print(f"jax_lanes: {lanes or batch}")
    for s in names:
        fn = functools.partial(JAX_SOLVERS[s], lanes=lanes)
        rate, out = _time_jax(fn, a, m, batch)
        print(f"jax_{s}_img_per_s: {rate:.1f}")
        print(f"jax_{s}_psnr: {psnr(to_images(out, images.shape), images):.2f}")
        kind = BASELINE_OF[s]
        if kind in base_results:
            brate, bout, n = base_results[kind]
            sub = psnr(to_images(out[:n], images[:n].shape), images[:n])
            print(f"jax_{s}_psnr_first{n}: {sub:.2f}")
            print(f"jax_{s}_speedup_vs_{BASELINES[kind][0]}: {rate / brate:.1f}")
            if kind == "nucnorm":
                f_j = np.asarray(solvers.nucnorm_objective(out[:n], a[:n], m[:n]))
                f_c = np.asarray(solvers.nucnorm_objective(bout, a[:n], m[:n]))
                gap = np.max((f_j - f_c) / np.abs(f_c))
                print(f"jax_{s}_objective_rel_gap_vs_cvxpy_max: {gap:.2e}")
    return 0
