"""Tests for menet_jax.me.tvm (Guo et al.'s TV minimisation) against independent float64 solves.

The objective per image and channel is 0.5 * sum_kept (u - x)^2 + weight * TV(u), isotropic TV
of forward differences (docs/method.md §2.7). References: cvxpy (CLARABEL, an interior-point
method) for the minimiser, and a float64 numpy run of the same Chambolle-Pock iterations for the
finite-difference gradient check.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.figures import photos
from menet_jax.me import sample_mask, tvm

WEIGHT = tvm.TVM_WEIGHT


# --- float64 references ------------------------------------------------------------------------


def objective64(u, x, m, weight=WEIGHT):
    gx = np.zeros_like(u)
    gy = np.zeros_like(u)
    gx[:, :-1] = u[:, 1:] - u[:, :-1]
    gy[:-1, :] = u[1:, :] - u[:-1, :]
    return 0.5 * np.sum(m * (u - x) ** 2) + weight * np.sum(np.sqrt(gx**2 + gy**2))


def cvxpy_tv(x, m, weight=WEIGHT):
    """The minimiser of one channel's objective, [H, W] float64, by cvxpy."""
    cp = pytest.importorskip("cvxpy")
    u = cp.Variable(x.shape)
    gx = u[:, 1:] - u[:, :-1]
    gy = u[1:, :] - u[:-1, :]
    # Both differences inside; the last row has only gx, the last column only gy.
    inner = cp.vstack([cp.vec(gx[:-1, :], order="C"), cp.vec(gy[:, :-1], order="C")])
    tv = cp.sum(cp.norm(inner, 2, axis=0)) + cp.sum(cp.abs(gx[-1, :])) + cp.sum(cp.abs(gy[:, -1]))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(cp.multiply(m, u - x)) + weight * tv))
    problem.solve(solver="CLARABEL")
    assert problem.status == "optimal"
    return u.value


def chambolle_pock64(x, m, iterations, weight=WEIGHT):
    """The solver's iterations in float64 numpy, one [H, W] channel, for finite differences."""
    tau, sigma = 1.0, 1.0 / 8.0
    f = x * m
    u, u_bar = f.copy(), f.copy()
    px, py = np.zeros_like(f), np.zeros_like(f)
    for _ in range(iterations):
        gx = np.zeros_like(f)
        gy = np.zeros_like(f)
        gx[:, :-1] = u_bar[:, 1:] - u_bar[:, :-1]
        gy[:-1, :] = u_bar[1:, :] - u_bar[:-1, :]
        px, py = px + sigma * gx, py + sigma * gy
        scale = np.maximum(1.0, np.sqrt(px**2 + py**2) / weight)
        px, py = px / scale, py / scale
        div = np.zeros_like(f)
        div[:, :-1] += px[:, :-1]
        div[:, 1:] -= px[:, :-1]
        div[:-1, :] += py[:-1, :]
        div[1:, :] -= py[:-1, :]
        v = u + tau * div
        u_new = np.where(m > 0, (v + tau * f) / (1 + tau), v)
        u_bar, u = 2 * u_new - u, u_new
    return np.clip(u, 0.0, 1.0)


def _random(seed, shape=(3, 8, 8, 3), p=0.5):
    rng = np.random.default_rng(seed)
    return rng.random(shape), (rng.random(shape) < p).astype(np.float64)


# --- (1) against cvxpy ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed, p", [(0, 0.5), (1, 0.3), (2, 0.8)])
def test_matches_cvxpy_minimiser_on_random_images(seed, p):
    """Run long (10,000 iterations), the solver reaches cvxpy's minimum: objective within 1e-7
    (relative; measured at most 1.5e-8), every kept pixel within 5e-5 (measured 9e-6; float32
    rounding and cvxpy's own stopping tolerance). The kept pixels of a minimiser are unique
    (the objective is strictly convex in them); dropped ones need not be: a dropped bottom-right
    pixel enters only |u - left| + |u - above|, so anything between its two neighbours is
    optimal, and flat stretches of the solution leave other dropped pixels an interval too
    (seen at p = 0.3, 0.09 apart with equal objectives)."""
    x, m = _random(seed, p=p)
    out = np.asarray(tvm.tv_minimize(x, m, iterations=10_000), np.float64)
    for b in range(x.shape[0]):
        for c in range(x.shape[-1]):
            xc, mc = x[b, ..., c], m[b, ..., c]
            ref = cvxpy_tv(xc, mc)
            f_ref = objective64(ref, xc, mc)
            assert abs(objective64(out[b, ..., c], xc, mc) - f_ref) <= 1e-7 * f_ref
            np.testing.assert_allclose(out[b, ..., c][mc > 0], ref[mc > 0], atol=5e-5)


def test_default_iterations_near_cvxpy_on_a_photo_tile():
    """At the default 300 iterations a 32x32 photo tile at Guo's p = 0.5 is within 1e-2 of the
    minimal objective and 5e-3 RMS of cvxpy's minimiser: the largest distances `bench me` saw
    over 96 channels (9.5e-3 and 4.8e-3; medians 2.8e-4 and 2.3e-4, docs/method.md §2.7)."""
    x = photos.photo_tiles(1, seed=3)[0].astype(np.float64)
    m = np.asarray(sample_mask(jax.random.key(0), x.shape, tvm.TVM_KEEP_PROBABILITY), np.float64)
    out = np.asarray(tvm.tv_minimize(x, m), np.float64)
    for c in range(3):
        ref = cvxpy_tv(x[..., c], m[..., c])
        f_ref = objective64(ref, x[..., c], m[..., c])
        assert objective64(out[..., c], x[..., c], m[..., c]) <= (1 + 1e-2) * f_ref
        assert np.sqrt(np.mean((out[..., c] - ref) ** 2)) <= 5e-3


# --- (2) known properties ----------------------------------------------------------------------


def test_full_mask_and_vanishing_weight_return_the_image():
    x, _ = _random(3)
    out = tvm.tv_minimize(x, np.ones_like(x), weight=1e-6)
    np.testing.assert_allclose(out, x, atol=1e-5)


def test_constant_image_stays_constant():
    x = np.full((2, 8, 8, 3), 0.37)
    _, m = _random(4, shape=x.shape)
    np.testing.assert_allclose(tvm.tv_minimize(x, m), x, atol=1e-4)


def test_output_has_no_more_tv_than_the_dropped_image():
    """The dropped image (kept pixels, 0 elsewhere) fits every kept pixel exactly, so the
    minimiser's objective, and with it its TV, cannot exceed that image's."""
    x = photos.photo_tiles(4, seed=1)
    m = sample_mask(jax.random.key(1), x.shape, 0.5)
    out = tvm.tv_minimize(x, m)
    dropped = x * m
    assert np.all(tvm.total_variation(out) <= tvm.total_variation(dropped))
    f_out = tvm.tv_objective(out, x, m, weight=WEIGHT)
    assert np.all(f_out <= tvm.tv_objective(dropped, x, m, weight=WEIGHT))
    assert out.dtype == jnp.float32 and float(out.min()) >= 0 and float(out.max()) <= 1


# --- (3) batching ------------------------------------------------------------------------------


def test_batched_vmapped_and_single_images_agree():
    x, m = _random(5, shape=(4, 8, 8, 3))
    batched = tvm.tv_minimize(x, m, iterations=50)
    vmapped = jax.jit(jax.vmap(lambda a, b: tvm.tv_minimize(a, b, iterations=50)))(x, m)
    np.testing.assert_allclose(vmapped, batched, atol=1e-6)
    for i in range(x.shape[0]):
        single = tvm.tv_minimize(x[i], m[i], iterations=50)
        np.testing.assert_allclose(single, batched[i], atol=1e-6)


def test_grad_jits_once_for_new_images_and_weights_and_vmaps():
    x, m = _random(11, shape=(3, 8, 8, 3))
    c = np.random.default_rng(12).normal(size=x.shape)

    def loss(xx, mm, cc, weight):
        out = tvm.tv_minimize(xx, mm, weight=weight, iterations=50, differentiable=True)
        return jnp.sum(cc * out)

    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grad(xx, mm, cc, weight):
        return jax.grad(loss)(xx, mm, cc, weight)

    batched = grad(x, m, c, WEIGHT)
    grad(x[::-1], m, c, 0.1)  # new images, a new weight: no retrace (the weight is traced)
    per_image = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, 0, 0, None)))(x, m, c, WEIGHT)
    chex.assert_tree_all_finite(per_image)
    np.testing.assert_allclose(per_image, batched, atol=1e-5 * float(jnp.max(jnp.abs(batched))))


# --- (4) gradients -----------------------------------------------------------------------------


def test_exact_gradient_matches_float64_finite_differences():
    """d<g, tv_minimize(x)>/dx of the unrolled float32 iterations against central differences of
    the same iterations in float64 (step 1e-6): relative error below 1e-5 (measured 1e-7 to 1e-6
    at 40 and 300 iterations)."""
    iterations = 40
    x, m = _random(6, shape=(6, 6, 2))
    g = np.random.default_rng(7).normal(size=x.shape)

    def loss(xx):
        out = tvm.tv_minimize(xx, m, iterations=iterations, differentiable=True)
        return jnp.sum(out * g)

    grad = np.asarray(jax.grad(loss)(jnp.asarray(x, jnp.float32)), np.float64)

    def loss64(xx):
        return sum(
            np.sum(chambolle_pock64(xx[..., c], m[..., c], iterations) * g[..., c])
            for c in range(x.shape[-1])
        )

    fd = np.zeros_like(x)
    eps = 1e-6
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        fd[i] = (loss64(x + e) - loss64(x - e)) / (2 * eps)
    assert np.all(fd[m == 0] == 0) and np.all(grad[m == 0] == 0)  # dropped pixels are ignored
    assert np.linalg.norm(grad - fd) <= 1e-5 * np.linalg.norm(fd)


def test_both_modes_give_the_same_values_and_bpda_passes_the_gradient():
    x, m = _random(8)
    plain = tvm.tv_minimize(x, m, iterations=100)
    exact = tvm.tv_minimize(x, m, iterations=100, differentiable=True)
    np.testing.assert_allclose(exact, plain, atol=1e-6)

    def bpda(xx):  # straight-through, as the defended classifier uses it
        return xx + jax.lax.stop_gradient(tvm.tv_minimize(xx, m, iterations=100) - xx)

    grad = jax.jit(jax.grad(lambda xx: jnp.sum(bpda(xx))))(jnp.asarray(x, jnp.float32))
    np.testing.assert_array_equal(grad, np.ones_like(x))
    # Off, the while loop refuses reverse mode rather than returning a silent zero gradient.
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.grad(lambda xx: jnp.sum(tvm.tv_minimize(xx, m, iterations=10)))(jnp.asarray(x))


# --- (5) bad options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, named",
    [
        ({"weight": 0.0}, "0.0"),
        ({"weight": -0.03}, "-0.03"),
        ({"weight": float("nan")}, "nan"),
        ({"weight": float("inf")}, "inf"),
        ({"weight": "0.03"}, "'0.03'"),
        ({"weight": None}, "None"),
        ({"weight": [0.03]}, "[0.03]"),
        ({"iterations": 0}, "got 0"),
        ({"iterations": 10**6}, "1000000"),
        ({"iterations": 2.5}, "2.5"),
        ({"iterations": True}, "True"),
    ],
)
def test_bad_options_raise_one_sentence(options, named):
    with pytest.raises(ValueError) as info:
        tvm.check_tvm_options(**options)
    message = str(info.value)
    assert named in message and message.count(". ") == 0 and message.endswith(".")
    with pytest.raises(ValueError):
        tvm.tv_minimize(np.zeros((4, 4, 1)), np.ones((4, 4, 1)), **options)


def test_a_weight_may_be_any_concrete_scalar():
    for weight in (1, np.float32(0.03), jnp.float32(0.03), np.array(0.5)):
        tvm.check_tvm_options(weight=weight)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        tvm.tv_minimize(np.zeros((4, 4, 1)), np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        tvm.tv_minimize(np.zeros((4, 4)), np.ones((4, 4)))


# ---------------------------------------------------------------------------------------------
# tvm as a method of the registry: config.me.method="tvm"


def test_the_registered_method_is_tv_minimize_on_the_images():
    """`reconstruct(method="tvm")` maps the images to [-1, 1] and back around the solver, as it
    does for the ME solvers; the map is affine, so the minimiser is the same: values equal to
    float32 rounding (1e-5 covers it), gradients too."""
    from menet_jax.me import reconstruct

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.random((2, 8, 8, 3)), jnp.float32)
    mask = sample_mask(jax.random.key(4), x.shape, 0.5)
    opts = {"weight": 0.05, "iterations": 60}
    direct = tvm.tv_minimize(x, mask, **opts)
    via = reconstruct(x, mask, method="tvm", **opts)
    np.testing.assert_allclose(via, direct, atol=1e-5)
    w = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    g_direct = jax.grad(
        lambda v: jnp.sum(w * tvm.tv_minimize(v, mask, **opts, differentiable=True))
    )(x)
    g_via = jax.grad(
        lambda v: jnp.sum(w * reconstruct(v, mask, method="tvm", differentiable=True, **opts))
    )(x)
    np.testing.assert_allclose(g_via, g_direct, atol=1e-5)


def test_config_tv_keys_are_checked_in_one_sentence():
    from menet_jax import config, preprocess
    from menet_jax.config import ConfigError
    from tests.test_train import tiny_config

    c = tiny_config(**{"me.method": "tvm"})
    config.validate(c)
    assert preprocess.from_config(c.me).method.name == "tvm"
    config.validate(tiny_config(**{"me.method": "tvm", "me.tv_iterations": tvm.MAX_ITERATIONS}))
    bad = [("me.tv_weight", 0.0), ("me.tv_weight", -1.0), ("me.tv_weight", float("inf")),
           ("me.tv_iterations", 0), ("me.tv_iterations", tvm.MAX_ITERATIONS + 1)]  # fmt: skip
    for key, value in bad:
        with pytest.raises(ConfigError, match=f"config.{key}") as e:
            config.validate(tiny_config(**{"me.method": "tvm", key: value}))
        assert "\n" not in str(e.value)


def test_a_tvm_model_trains_and_is_evaluated(tmp_path):
    """The demo's path with config.me.method=tvm: S' offline, a few steps, then the evaluation's
    BPDA and BPDA+EOT rows and the headline."""
    from menet_jax import evaluation, train
    from tests.test_evaluate import shrink_eval
    from tests.test_train import tiny_config

    c = tiny_config(num_train_steps=2, **{"me.method": "tvm", "me.tv_iterations": 20,
                                          "me.p_start": 0.5, "me.p_end": 0.5})  # fmt: skip
    c = shrink_eval(c, 4)
    c.eval.attacks = "pgd,eot"
    workdir = str(tmp_path / "tvm")
    summary = train.train_and_evaluate(c, workdir)
    assert summary["steps"] == 2 and 0.0 <= summary["clean_accuracy"] <= 1.0
    report = evaluation.evaluate(c, workdir)
    assert report["headline"]["n"] == 4 and 0.0 <= report["headline"]["accuracy"] <= 1.0
