"""`python -m menet_jax.bench me`: ME solver throughput vs the authors' per-image code.

Prints `name: value` lines: images/s of each JAX solver on CIFAR-shaped 32x96 matrices ([R|G|B]
of 32x32 crops of real skimage.data photos, in [-1, 1]) at p = 0.5 on the current backend, each
solver's reconstruction PSNR, and, when importable, the authors' one-image-at-a-time approach on
the same matrices (numpy USVT with np.linalg.svd as coded, fancyimpute.SoftImpute, cvxpy + SCS
nuclear norm) with the speed ratios.

On a CPU backend it also measures the whole machine: one JAX process per core (`--workers`),
each solving its share of the matrices, and the same for the authors' code, since a single
XLA:CPU process runs these batched small matrix products on about one core.
"""

import argparse
import functools
import multiprocessing
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.figures import photos
from menet_jax.me import masks, solvers
from menet_jax.me.reconstruct import images_to_matrices, matrices_to_images

JAX_SOLVERS = {
    "usvt": lambda a, m, lanes: solvers.usvt(a, m),
    "softimpute": lambda a, m, lanes: solvers.softimpute(a, m, lanes=lanes),
    "softimpute_acc": lambda a, m, lanes: solvers.softimpute(a, m, accelerated=True, lanes=lanes),
    "nucnorm": lambda a, m, lanes: solvers.nucnorm(a, m, lanes=lanes),
    # The same iterations with a LAPACK eigendecomposition per step (the pre-tracking path).
    "softimpute_eigh": lambda a, m, lanes: solvers.softimpute(a, m, lanes=lanes, svt="eigh"),
}
# Which authors' baseline each JAX solver is compared with.
BASELINE_OF = {
    "usvt": "usvt",
    "softimpute": "softimpute",
    "softimpute_acc": "softimpute",
    "nucnorm": "nucnorm",
    "softimpute_eigh": "softimpute",
}


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """Mean PSNR (dB) of the image rows, the measure the recorded figures use."""
    return photos.psnr(x, y, axis=(-2, -1))


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


# Iteration counts: the solvers' internal loops, with each benchmarked solver's options.
_ITERATIONS = {
    "softimpute": lambda a, m: solvers._softimpute(
        a, m, None, None, accelerated=False, svt="tracked", **_LOOP
    ),
    "softimpute_acc": lambda a, m: solvers._softimpute(
        a, m, None, None, accelerated=True, svt="tracked", **_LOOP
    ),
    "softimpute_eigh": lambda a, m: solvers._softimpute(
        a, m, None, None, accelerated=False, svt="eigh", **_LOOP
    ),
    "nucnorm": lambda a, m: solvers._nucnorm(
        a, m, 1.0, None, accelerated=True, svt="tracked", **_LOOP
    ),
}
_LOOP = {"max_iters": 100, "tol": 1e-3, "lanes": None}


def _report_accuracy(names, a, m, n: int) -> None:
    """Mean iterations of the iterative solvers and, for Soft-Impute's exact mode, the relative
    error against `float64_softimpute` on the first n matrices."""
    a, m = a[:n], m[:n]
    ref = None
    for s in names:
        if s not in _ITERATIONS:
            continue
        out, iters = _ITERATIONS[s](a, m)
        print(f"jax_{s}_mean_iters_first{n}: {float(np.mean(iters)):.1f}")
        if s in ("softimpute", "softimpute_eigh"):
            if ref is None:
                ref = np.stack(
                    [float64_softimpute(np.asarray(a[i]), np.asarray(m[i])) for i in range(n)]
                )
            err = np.linalg.norm(np.asarray(out, np.float64) - ref, axis=(1, 2))
            err /= np.linalg.norm(ref, axis=(1, 2))
            print(f"jax_{s}_rel_err_vs_float64_first{n}_median: {np.median(err):.1e}")
            print(f"jax_{s}_rel_err_vs_float64_first{n}_max: {np.max(err):.1e}")


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


def _compiled(fn, a, m, batch: int):
    """fn jitted and compiled for [batch, m, n] inputs."""
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(a[:batch], m[:batch]))
    return jitted


def _time_jax(jitted, a, m, batch: int) -> tuple[float, np.ndarray]:
    n = a.shape[0]
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


def _time_baseline(fn, a: np.ndarray, m: np.ndarray, warm: bool = True) -> tuple[float, np.ndarray]:
    a = np.asarray(a, np.float64)
    m = np.asarray(m, np.float64)
    if warm:
        fn(a[0], m[0])  # warm imports
    t0 = time.perf_counter()
    out = np.stack([fn(a[i], m[i]) for i in range(a.shape[0])])
    return a.shape[0] / (time.perf_counter() - t0), out


def _problem(num_images: int, p: float, seed: int):
    """The benchmark's photo tiles, zero-filled [R|G|B] matrices and masks (deterministic)."""
    images = photos.photo_tiles(num_images, seed=seed)
    a = images_to_matrices(2.0 * jnp.asarray(images) - 1.0, "concat")
    key = jax.random.fold_in(jax.random.key(seed), 1)
    m = images_to_matrices(masks.sample_mask(key, images.shape, p), "concat")
    return images, a * m, m


def _share(n: int, workers: int, rank: int) -> slice:
    cuts = np.linspace(0, n, workers + 1).astype(int)
    return slice(cuts[rank], cuts[rank + 1])


def _jax_worker(rank, workers, names, opts, barrier, queue) -> None:
    """One of `workers` processes: times each JAX solver on its share of the matrices."""
    _, a, m = _problem(opts["num_images"], opts["p"], opts["seed"])
    part = _share(a.shape[0], workers, rank)
    a, m = a[part], m[part]
    batch = min(opts["batch"], a.shape[0])
    for s in names:
        jitted = _compiled(functools.partial(JAX_SOLVERS[s], lanes=opts["lanes"]), a, m, batch)
        barrier.wait()
        t0 = time.time()
        _, out = _time_jax(jitted, a, m, batch)
        queue.put((s, rank, t0, time.time(), out))
        barrier.wait()  # the next solver's compilation must not overlap another's timing


def _baseline_worker(rank, workers, kind, n, opts, barrier, queue) -> None:
    _, a, m = _problem(opts["num_images"], opts["p"], opts["seed"])
    part = _share(n, workers, rank)
    fn = BASELINES[kind][1]
    fn(np.asarray(a[0], np.float64), np.asarray(m[0], np.float64))  # warm imports
    barrier.wait()
    t0 = time.time()
    _, out = _time_baseline(fn, np.asarray(a[part]), np.asarray(m[part]), warm=False)
    queue.put((kind, rank, t0, time.time(), out))


def _in_processes(target, workers: int, reports: int, *args) -> dict:
    """Runs target(rank, workers, *args, barrier, queue) in `workers` fresh processes, each of
    which puts `reports` results on the queue.

    Returns {name: (images_per_s_of_all_processes_together, [outputs by rank])}, the rate
    being the images all processes solved over the wall time from the first start to the last
    finish (compilation excluded). Each child runs XLA and BLAS single-threaded: one core each.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    one_core = {f"{lib}_NUM_THREADS": "1" for lib in ("OMP", "OPENBLAS", "MKL")}
    one_core["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false"
    saved = {k: os.environ.get(k) for k in one_core}
    os.environ.update(one_core)  # spawned children copy the environment at start
    try:
        procs = [
            ctx.Process(target=target, args=(r, workers, *args, barrier, queue))
            for r in range(workers)
        ]
        for pr in procs:
            pr.start()
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    got: dict = {}
    try:
        while sum(len(v) for v in got.values()) < workers * reports:
            name, rank, t0, t1, out = queue.get(timeout=1800)
            got.setdefault(name, {})[rank] = (t0, t1, out)
    finally:
        for pr in procs:
            pr.join(timeout=60)
            if pr.is_alive():
                pr.terminate()
    result = {}
    for name, parts in got.items():
        start = min(v[0] for v in parts.values())
        end = max(v[1] for v in parts.values())
        outs = [parts[r][2] for r in range(workers)]
        result[name] = (sum(len(o) for o in outs) / (end - start), outs)
    return result


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m menet_jax.bench me", description=__doc__)
    ap.add_argument("--num-images", type=int, default=1024, help="images per JAX solver")
    ap.add_argument("--batch", type=int, default=1024, help="JAX batch size")
    ap.add_argument(
        "--lanes",
        type=int,
        default=32,
        help="iterative solvers: matrices in flight per batch (refilled as they converge); "
        "0 = the whole batch. 32 keeps the lanes' working set in a CPU core's cache: on the "
        "2-core sandbox it beat 16, 48, 64 and 128",
    )
    ap.add_argument("--p", type=float, default=0.5, help="observation probability")
    ap.add_argument(
        "--solvers", default=",".join(JAX_SOLVERS), help=f"comma-separated, of {list(JAX_SOLVERS)}"
    )
    ap.add_argument("--baseline-images", type=int, default=256, help="numpy USVT images")
    ap.add_argument("--fancy-images", type=int, default=64, help="fancyimpute images")
    ap.add_argument("--cvxpy-images", type=int, default=6, help="cvxpy/SCS images")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument(
        "--reference-images",
        type=int,
        default=256,
        help="matrices for the iteration counts and the float64 accuracy check (0 skips)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="also time N processes at once (one per core; default: the core count on a CPU "
        "backend, 1 elsewhere); <= 1 skips it",
    )
    args = ap.parse_args(argv)
    names = [s for s in args.solvers.split(",") if s]
    for s in names:
        if s not in JAX_SOLVERS:
            raise SystemExit(f"--solvers: unknown solver {s!r}; allowed: {sorted(JAX_SOLVERS)}.")
    if args.num_images < 1 or args.batch < 1:
        raise SystemExit("--num-images and --batch must be >= 1.")
    masks.check_p(args.p)
    batch = min(args.batch, args.num_images)

    images, a, m = _problem(args.num_images, args.p, args.seed)
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
        jitted = _compiled(functools.partial(JAX_SOLVERS[s], lanes=lanes), a, m, batch)
        rate, out = _time_jax(jitted, a, m, batch)
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
    if args.reference_images > 0:
        _report_accuracy(names, a, m, min(args.reference_images, args.num_images))

    workers = args.workers
    if workers is None:
        workers = (os.cpu_count() or 1) if jax.default_backend() == "cpu" else 1
    if workers > 1:
        _whole_machine(workers, names, args, lanes, batch, images, base_results)
    return 0


def _whole_machine(workers, names, args, lanes, batch, images, base_results) -> None:
    """`workers` processes at once, for the authors' code and for each JAX solver."""
    tag = f"{workers}procs"
    print(f"workers: {workers}")
    opts = {"num_images": args.num_images, "p": args.p, "seed": args.seed}
    base_rates = {}
    for kind, (_, _, n) in sorted(base_results.items()):
        if n < workers:
            continue
        res = _in_processes(_baseline_worker, workers, 1, kind, n, opts)
        base_rates[kind] = res[kind][0]
        print(f"{BASELINES[kind][0]}_{kind}_img_per_s_{tag}: {base_rates[kind]:.1f}")
    opts.update(lanes=lanes, batch=batch)
    res = _in_processes(_jax_worker, workers, len(names), names, opts)
    for s in names:
        rate, outs = res[s]
        out = np.concatenate(outs)
        print(f"jax_{s}_img_per_s_{tag}: {rate:.1f}")
        print(f"jax_{s}_psnr_{tag}: {psnr(to_images(out, images.shape), images):.2f}")
        kind = BASELINE_OF[s]
        lib = BASELINES[kind][0]
        if kind in base_results:
            # The issue's comparison: this machine's cores vs the authors' loop as they ran it.
            print(f"jax_{s}_speedup_vs_{lib}_machine: {rate / base_results[kind][0]:.1f}")
        if kind in base_rates:
            print(f"jax_{s}_speedup_vs_{lib}_{tag}: {rate / base_rates[kind]:.1f}")
