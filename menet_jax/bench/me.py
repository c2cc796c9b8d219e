"""`python -m menet_jax.bench me`: ME solver throughput vs the authors' per-image code.

Prints `name: value` lines: images/s of each JAX solver on CIFAR-shaped 32x96 matrices ([R|G|B]
of 32x32 crops of real skimage.data photos, in [-1, 1]) at p = 0.5 on the current backend, each
solver's reconstruction PSNR (`tvm`, Guo et al.'s TV minimisation, docs/method.md §2.7, solves
the same masked images as 32x32x3 images at its default weight and iterations), and, when
importable, the authors' one-image-at-a-time approach on the same matrices (numpy USVT with
np.linalg.svd as coded, fancyimpute.SoftImpute, cvxpy + SCS nuclear norm) with the speed ratios.

On a CPU backend it also measures the whole machine: one JAX process per core (`--workers`),
each solving its share of the matrices, and the same for the authors' code, since a single
XLA:CPU process runs these batched small matrix products on about one core.
"""

import functools
import multiprocessing
import os
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax import cli
from menet_jax.bench import common
from menet_jax.bench.baselines import (
    BASELINES,
    cvxpy_tv,
    float64_softimpute,
    missing,
    time_baseline,
    tv_objective64,
)
from menet_jax.figures import photos
from menet_jax.me import masks, solvers, tvm
from menet_jax.me.reconstruct import images_to_matrices, matrices_to_images


def _tvm(a: jax.Array, m: jax.Array, lanes: int | None = None) -> jax.Array:
    """TV minimisation of [R|G|B] matrices [B, H, C*W] in [-1, 1], C = 3, as images.

    With `lanes` dividing the batch, `lanes` images at a time (`lax.map`), so that on a CPU the
    working set stays in cache as the iterative ME solvers' lanes do. The results agree to
    float32 rounding, which 300 iterations grow to at most about 1e-3 on photo tiles.
    """
    shape = a.shape[:-1] + (a.shape[-1] // 3, 3)
    images = matrices_to_images((a + 1.0) / 2.0, shape, "concat")
    mask = matrices_to_images(m, shape, "concat")
    if lanes and a.shape[0] % lanes == 0 and a.shape[0] > lanes:
        chunks = (a.shape[0] // lanes, lanes) + shape[1:]
        solve = lambda xm: tvm.tv_minimize(*xm)  # noqa: E731
        out = jax.lax.map(solve, (images.reshape(chunks), mask.reshape(chunks))).reshape(shape)
    else:
        out = tvm.tv_minimize(images, mask)
    return 2.0 * images_to_matrices(out, "concat") - 1.0


# Every solver is called as fn(a, mask, lanes=..., **options); the iterative ones also take
# return_iterations=True.
JAX_SOLVERS = {
    "usvt": lambda a, m, lanes=None: solvers.usvt(a, m),
    "softimpute": lambda a, m, **kw: solvers.softimpute(a, m, **kw),
    "softimpute_acc": lambda a, m, **kw: solvers.softimpute(a, m, accelerated=True, **kw),
    "nucnorm": lambda a, m, **kw: solvers.nucnorm(a, m, **kw),
    # The same iterations with a LAPACK eigendecomposition per step (the pre-tracking path).
    "softimpute_eigh": lambda a, m, **kw: solvers.softimpute(a, m, svt="eigh", **kw),
    "tvm": lambda a, m, lanes=None: _tvm(a, m, lanes),
}
ITERATIVE = ("softimpute", "softimpute_acc", "nucnorm", "softimpute_eigh")
# Which authors' baseline each JAX solver is compared with (None: no baseline).
BASELINE_OF = {
    "usvt": "usvt",
    "softimpute": "softimpute",
    "softimpute_acc": "softimpute",
    "nucnorm": "nucnorm",
    "softimpute_eigh": "softimpute",
    "tvm": None,
}


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """Mean PSNR (dB) of the image rows, the measure the recorded figures use."""
    return photos.psnr(x, y, axis=(-2, -1))


def to_images(est: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Clipped [-1, 1] concat-layout estimates -> images in [0, 1]."""
    out = (np.clip(est, -1, 1) + 1) / 2
    return np.asarray(matrices_to_images(jnp.asarray(out), shape, "concat"))


def _problem(num_images: int, p: float, seed: int):
    """The benchmark's photo tiles, zero-filled [R|G|B] matrices and masks (deterministic)."""
    images = photos.photo_tiles(num_images, seed=seed)
    a = images_to_matrices(2.0 * jnp.asarray(images) - 1.0, "concat")
    key = jax.random.fold_in(jax.random.key(seed), 1)
    m = images_to_matrices(masks.sample_mask(key, images.shape, p), "concat")
    return images, a * m, m


def _time_jax(jitted, a, m, batch: int) -> tuple[float, np.ndarray]:
    """Images per second of a compiled solver over all matrices in chunks of `batch`."""

    def solve_all():
        n, outs = a.shape[0], []
        for i in range(0, n, batch):
            chunk = slice(i, min(i + batch, n))
            if a[chunk].shape[0] != batch:  # keep one compiled shape: pad the last chunk
                pad = batch - a[chunk].shape[0]
                aa = jnp.concatenate([a[chunk], a[:pad]])
                mm = jnp.concatenate([m[chunk], m[:pad]])
                outs.append(jax.block_until_ready(jitted(aa, mm))[: batch - pad])
            else:
                outs.append(jax.block_until_ready(jitted(a[chunk], m[chunk])))
        return outs

    seconds, outs = common.timed(solve_all)
    return a.shape[0] / seconds, np.concatenate([np.asarray(o) for o in outs])


# cvxpy solves one 32x32 channel of the TV objective in about 0.1 s: at most this many images.
TVM_REFERENCE_IMAGES = 32


def _report_tvm_accuracy(a, m, n: int) -> None:
    """TV minimisation at its defaults against cvxpy's minimiser on the first n photo tiles, per
    channel: the objective's relative excess and the RMS distance (docs/method.md §2.7)."""
    shape = (n, a.shape[1], a.shape[2] // 3, 3)
    out = to_images(np.asarray(JAX_SOLVERS["tvm"](a[:n], m[:n])), shape).astype(np.float64)
    x = np.asarray(matrices_to_images((a[:n] + 1.0) / 2.0, shape, "concat"), np.float64)
    obs = np.asarray(matrices_to_images(m[:n], shape, "concat"), np.float64)
    gaps, rms = [], []
    for i, c in np.ndindex(n, 3):
        xc, mc, uc = x[i, ..., c], obs[i, ..., c], out[i, ..., c]
        ref = cvxpy_tv(xc, mc, tvm.TVM_WEIGHT)
        f_ref = tv_objective64(ref, xc, mc, tvm.TVM_WEIGHT)
        gaps.append((tv_objective64(uc, xc, mc, tvm.TVM_WEIGHT) - f_ref) / f_ref)
        rms.append(np.sqrt(np.mean((uc - ref) ** 2)))
    for name, v in (("objective_rel_gap", gaps), ("rms", rms)):
        for stat in ("median", "max"):
            value = getattr(np, stat)(v)
            common.report(f"jax_tvm_{name}_vs_cvxpy_first{n}_{stat}", f"{value:.1e}")


def _report_accuracy(names, a, m, n: int) -> None:
    """Mean iterations of the iterative solvers and, for Soft-Impute's exact mode, the relative
    error against `float64_softimpute` on the first n matrices; TV minimisation's distance from
    cvxpy's minimiser on the first TVM_REFERENCE_IMAGES of them."""
    if "tvm" in names and missing("nucnorm") is None:  # cvxpy importable
        _report_tvm_accuracy(a, m, min(n, TVM_REFERENCE_IMAGES))
    a, m = a[:n], m[:n]
    ref = None
    for s in names:
        if s not in ITERATIVE:
            continue
        out, iters = JAX_SOLVERS[s](a, m, return_iterations=True)
        common.report(f"jax_{s}_mean_iters_first{n}", f"{float(np.mean(iters)):.1f}")
        if s in ("softimpute", "softimpute_eigh"):
            if ref is None:
                ref = np.stack(
                    [float64_softimpute(np.asarray(a[i]), np.asarray(m[i])) for i in range(n)]
                )
            err = np.linalg.norm(np.asarray(out, np.float64) - ref, axis=(1, 2))
            err /= np.linalg.norm(ref, axis=(1, 2))
            common.report(f"jax_{s}_rel_err_vs_float64_first{n}_median", f"{np.median(err):.1e}")
            common.report(f"jax_{s}_rel_err_vs_float64_first{n}_max", f"{np.max(err):.1e}")


# --- one process per core ---------------------------------------------------------------------


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
        solve = functools.partial(JAX_SOLVERS[s], lanes=opts["lanes"])
        jitted = common.compiled(solve, a[:batch], m[:batch])
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
    _, out = time_baseline(fn, np.asarray(a[part]), np.asarray(m[part]), warm=False)
    queue.put((kind, rank, t0, time.time(), out))


def _start_one_core_processes(target, workers: int, args: tuple, barrier, queue) -> list:
    """Starts target(rank, workers, *args, barrier, queue) in `workers` spawned processes, each
    with XLA and BLAS single-threaded (one core each)."""
    ctx = multiprocessing.get_context("spawn")
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
    return procs


def _in_processes(target, workers: int, reports: int, *args) -> dict:
    """Runs target(rank, workers, *args, barrier, queue) in `workers` fresh processes, each of
    which puts `reports` results on the queue.

    Returns {name: (images_per_s_of_all_processes_together, [outputs by rank])}, the rate
    being the images all processes solved over the wall time from the first start to the last
    finish (compilation excluded). Each child runs XLA and BLAS single-threaded: one core each.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = _start_one_core_processes(target, workers, args, barrier, queue)
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


def _whole_machine(workers, names, args, lanes, batch, images, base_results) -> None:
    """`workers` processes at once, for the authors' code and for each JAX solver."""
    tag = f"{workers}procs"
    common.report("workers", workers)
    opts = {"num_images": args.num_images, "p": args.p, "seed": args.seed}
    base_rates = {}
    for kind, (_, _, n) in sorted(base_results.items()):
        if n < workers:
            continue
        res = _in_processes(_baseline_worker, workers, 1, kind, n, opts)
        base_rates[kind] = res[kind][0]
        common.report(f"{BASELINES[kind][0]}_{kind}_img_per_s_{tag}", f"{base_rates[kind]:.1f}")
    opts.update(lanes=lanes, batch=batch)
    res = _in_processes(_jax_worker, workers, len(names), names, opts)
    for s in names:
        rate, outs = res[s]
        out = np.concatenate(outs)
        common.report(f"jax_{s}_img_per_s_{tag}", f"{rate:.1f}")
        common.report(f"jax_{s}_psnr_{tag}", f"{psnr(to_images(out, images.shape), images):.2f}")
        kind = BASELINE_OF[s]
        if kind is None:
            continue
        lib = BASELINES[kind][0]
        if kind in base_results:
            # The comparison this benchmark is for: the machine's cores against the authors' loop
            # as they ran it.
            speedup = rate / base_results[kind][0]
            common.report(f"jax_{s}_speedup_vs_{lib}_machine", f"{speedup:.1f}")
        if kind in base_rates:
            common.report(f"jax_{s}_speedup_vs_{lib}_{tag}", f"{rate / base_rates[kind]:.1f}")


# --- the command ------------------------------------------------------------------------------


def _options() -> cli.Options:
    return (
        cli.Options("python -m menet_jax.bench me", __doc__)
        .define("integer", "num-images", 1024, "images per JAX solver")
        .define("integer", "batch", 1024, "JAX batch size")
        .define(
            "integer",
            "lanes",
            32,
            "iterative solvers: matrices in flight per batch (refilled as they converge); "
            "0 = the whole batch. 32 keeps the lanes' working set in a CPU core's cache",
        )
        .define("float", "p", 0.5, "observation probability")
        .define(
            "string", "solvers", ",".join(JAX_SOLVERS), f"comma-separated, of {list(JAX_SOLVERS)}"
        )
        .define("integer", "baseline-images", 256, "numpy USVT images")
        .define("integer", "fancy-images", 64, "fancyimpute images")
        .define("integer", "cvxpy-images", 6, "cvxpy/SCS images")
        .define("boolean", "no-baselines", False)
        .define(
            "integer",
            "reference-images",
            256,
            "matrices for the iteration counts and the float64 accuracy check (0 skips)",
        )
        .define("integer", "seed", 0)
        .define(
            "integer",
            "workers",
            None,
            "also time N processes at once (one per core; default: the core count on a CPU "
            "backend, 1 elsewhere); <= 1 skips it",
        )
    )


def _parse(argv: list[str]) -> tuple[SimpleNamespace, list[str]]:
    """The options and the solver names; raises cli.UsageError on a value the run cannot use."""
    args = _options().parse(argv)
    names = [s for s in args.solvers.split(",") if s]
    unknown = [s for s in names if s not in JAX_SOLVERS]
    if unknown or not names:
        raise cli.UsageError(
            f"--solvers={args.solvers!r} must name one or more of {','.join(JAX_SOLVERS)}."
        )
    if args.num_images < 1 or args.batch < 1:
        raise cli.UsageError(
            f"--num-images={args.num_images} and --batch={args.batch} must both be >= 1."
        )
    if not 0 < args.p <= 1:
        raise cli.UsageError(f"--p={args.p} must be in (0, 1].")
    return args, names


def _run_baselines(args, names, a, m, images) -> dict:
    """Times the authors' code for each baseline the chosen solvers compare with.

    Returns:
      {kind: (images per second, estimates, how many matrices)} of the baselines that ran.
    """
    n_base = {
        "usvt": args.baseline_images,
        "softimpute": args.fancy_images,
        "nucnorm": args.cvxpy_images,
    }
    results = {}
    for kind in sorted({BASELINE_OF[s] for s in names} - {None}):
        lib, fn = BASELINES[kind]
        n = min(n_base[kind], args.num_images)
        why = missing(kind) if n >= 1 else None
        if n < 1 or why:
            common.report(f"{lib}_{kind}_img_per_s", "skipped")
            if why:
                print(f"note: {lib}_{kind} skipped: {why}", file=sys.stderr)
            continue
        rate, out = time_baseline(fn, np.asarray(a[:n]), np.asarray(m[:n]))
        results[kind] = (rate, out, n)
        common.report(f"{lib}_{kind}_img_per_s", f"{rate:.1f}")
        common.report(
            f"{lib}_{kind}_psnr", f"{psnr(to_images(out, images[:n].shape), images[:n]):.2f}"
        )
    return results


def _run_jax(names, lanes, batch, a, m, images, base_results) -> None:
    """Times each JAX solver in this process and compares it with its baseline."""
    common.report("jax_batch", batch)
    common.report("jax_lanes", lanes or batch)
    for s in names:
        solve = functools.partial(JAX_SOLVERS[s], lanes=lanes)
        rate, out = _time_jax(common.compiled(solve, a[:batch], m[:batch]), a, m, batch)
        common.report(f"jax_{s}_img_per_s", f"{rate:.1f}")
        common.report(f"jax_{s}_psnr", f"{psnr(to_images(out, images.shape), images):.2f}")
        kind = BASELINE_OF[s]
        if kind not in base_results:
            continue
        brate, bout, n = base_results[kind]
        sub = psnr(to_images(out[:n], images[:n].shape), images[:n])
        common.report(f"jax_{s}_psnr_first{n}", f"{sub:.2f}")
        common.report(f"jax_{s}_speedup_vs_{BASELINES[kind][0]}", f"{rate / brate:.1f}")
        if kind == "nucnorm":
            f_j = np.asarray(solvers.nucnorm_objective(out[:n], a[:n], m[:n]))
            f_c = np.asarray(solvers.nucnorm_objective(bout, a[:n], m[:n]))
            gap = np.max((f_j - f_c) / np.abs(f_c))
            common.report(f"jax_{s}_objective_rel_gap_vs_cvxpy_max", f"{gap:.2e}")


def main(argv: list[str]) -> int:
    """Runs the benchmark; returns a process exit code (2 for a bad option)."""
    try:
        args, names = _parse(argv)
    except cli.UsageError as e:
        return common.fail(e)
    batch = min(args.batch, args.num_images)
    images, a, m = _problem(args.num_images, args.p, args.seed)
    backend, _, kind = common.devices()
    common.report("backend", f"{backend} ({kind})")
    common.report(
        "matrices", f"{args.num_images} x {a.shape[1]}x{a.shape[2]} photo tiles, p={args.p}"
    )
    common.report("psnr_zero_fill", f"{psnr(to_images(np.asarray(a), images.shape), images):.2f}")
    base_results = {} if args.no_baselines else _run_baselines(args, names, a, m, images)
    lanes = args.lanes if 0 < args.lanes < batch else None
    _run_jax(names, lanes, batch, a, m, images, base_results)
    if args.reference_images > 0:
        _report_accuracy(names, a, m, min(args.reference_images, args.num_images))
    workers = args.workers
    if workers is None:
        workers = (os.cpu_count() or 1) if backend == "cpu" else 1
    if workers > 1:
        _whole_machine(workers, names, args, lanes, batch, images, base_results)
    return 0
