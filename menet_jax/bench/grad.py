"""`python -m menet_jax.bench grad`: the cost of exact gradients through ME against BPDA's.

For each solver and matrix shape, one jitted `jax.value_and_grad` of <c, ME(A)> with respect to
A over a batch of masked photo matrices (p = 0.5 by default): with BPDA (ME's forward pass, the
identity's backward: what an attack step pays for ME today; the value keeps XLA from dropping
the forward pass, as an attack's loss would) and with `differentiable=True` (the exact gradient
for the fixed mask, docs/method.md §5.6). Shapes: 28x28 (one channel of a photo
crop, MNIST's matrix) and 32x96 (CIFAR's [R|G|B]). Prints milliseconds per image of each (the
median of `--repeats` timed calls after compilation) and their ratio.

  python -m menet_jax.bench grad
  python -m menet_jax.bench grad --solvers=usvt --batch=16 --repeats=1
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax import cli
from menet_jax.bench import common
from menet_jax.figures import photos
from menet_jax.me import masks, solvers
from menet_jax.me.reconstruct import images_to_matrices

SOLVERS = {
    "usvt": solvers.usvt,
    "softimpute": solvers.softimpute,
    "softimpute_acc": lambda a, m, **kw: solvers.softimpute(a, m, accelerated=True, **kw),
    "nucnorm": solvers.nucnorm,
}
SHAPES = ("28x28", "32x96")


def _matrices(shape: str, batch: int, p: float, seed: int):
    """Zero-filled [-1, 1] photo matrices of the named shape, their masks and a cotangent."""
    images = photos.photo_tiles(batch, seed=seed)
    if shape == "28x28":
        images = images[:, :28, :28, :1]
    key = jax.random.key(seed)
    mask = images_to_matrices(masks.sample_mask(key, images.shape, p), "concat")
    a = images_to_matrices(2.0 * jnp.asarray(images) - 1.0, "concat") * mask
    c = jax.random.normal(jax.random.fold_in(key, 1), a.shape)
    return a, mask, c


def _grad(solver, exact: bool):
    def loss(a, m, c):
        if exact:
            est = solver(a, m, differentiable=True)
        else:
            est = a + jax.lax.stop_gradient(solver(a, m) - a)
        return jnp.sum(c * est)

    return jax.value_and_grad(loss)


def _ms_per_image(fn, args, repeats: int) -> float:
    jitted = common.compiled(fn, *args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)) / args[0].shape[0]


def _parse(argv: list[str]):
    """The options and the solver names; raises cli.UsageError on a value the run cannot use."""
    args = (
        cli.Options("python -m menet_jax.bench grad", __doc__)
        .define("string", "solvers", ",".join(SOLVERS), "comma-separated subset")
        .define("string", "shapes", ",".join(SHAPES), "comma-separated subset")
        .define("integer", "batch", 64, "matrices per call")
        .define("integer", "repeats", 5, "timed calls (median)")
        .define("float", "p", 0.5, "observation probability")
        .define("integer", "seed", 0)
        .parse(argv)
    )
    names = [n for n in args.solvers.split(",") if n]
    shapes = [s for s in args.shapes.split(",") if s]
    if not names or any(n not in SOLVERS for n in names):
        raise cli.UsageError(
            f"--solvers must be a subset of {','.join(SOLVERS)}, got {args.solvers!r}."
        )
    if not shapes or any(s not in SHAPES for s in shapes):
        raise cli.UsageError(
            f"--shapes must be a subset of {','.join(SHAPES)}, got {args.shapes!r}."
        )
    if args.batch < 1 or args.repeats < 1 or not 0 < args.p <= 1:
        raise cli.UsageError(
            f"--batch and --repeats must be >= 1 and --p in (0, 1]; got --batch={args.batch} "
            f"--repeats={args.repeats} --p={args.p}."
        )
    return args, names, shapes


def main(argv: list[str]) -> int:
    """Runs the benchmark; returns a process exit code (2 for a bad option)."""
    try:
        args, names, shapes = _parse(argv)
    except cli.UsageError as e:
        return common.fail(e)
    backend, count, kind = common.devices()
    common.report("grad/backend", f"{backend} ({count} devices, {kind})")
    common.report("grad/config", f"batch={args.batch} p={args.p} repeats={args.repeats}")
    for shape in shapes:
        data = _matrices(shape, args.batch, args.p, args.seed)
        for name in names:
            bpda = _ms_per_image(_grad(SOLVERS[name], False), data, args.repeats)
            exact = _ms_per_image(_grad(SOLVERS[name], True), data, args.repeats)
            common.report(f"grad/{name}/{shape}/bpda_ms_per_image", f"{bpda:.3f}")
            common.report(f"grad/{name}/{shape}/exact_ms_per_image", f"{exact:.3f}")
            common.report(f"grad/{name}/{shape}/exact_over_bpda", f"{exact / bpda:.2f}")
    return 0
