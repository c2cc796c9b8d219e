"""Tests for menet_jax.me against independent float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import me
from menet_jax.figures import photos

M, N = 32, 96


# --- float64 numpy references ---------------------------------------------------------------


def ref_usvt(a, mask, rank_fraction=0.8):
    """The authors' USVT: full SVD of the zero-filled matrix, top-k kept, divided by p_hat."""
    a = np.asarray(a, np.float64) * mask
    h, w = a.shape
    p_obs = mask.sum() / mask.size
    u, s, vt = np.linalg.svd(a)
    k = int(np.floor(rank_fraction * min(h, w) + 1e-9))
    return (u[:, :k] * s[:k]) @ vt[:k] / p_obs


def ref_svt(x, lam):
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return (u * np.maximum(s - lam, 0)) @ vt


def ref_softimpute(a, mask, lam=None, max_iters=100, tol=1e-3):
    """fancyimpute's SoftImpute loop in float64 with an exact sigma_max."""
    obs = mask > 0
    x = np.where(obs, a, 0.0).astype(np.float64)
    if lam is None:
        lam = np.linalg.svd(x, compute_uv=False)[0] / 50
    for _ in range(max_iters):
        z = ref_svt(x, lam)
        old, new = x[~obs], z[~obs]
        ssd, old_norm = np.sum((old - new) ** 2), np.sqrt(np.sum(old**2))
        converged = old_norm > 0 and np.sqrt(ssd) / old_norm < tol
        x[~obs] = z[~obs]
        if converged:
            break
    return x


def ref_nucnorm_opt(a, mask, mu, iters=3000):
    """Float64 FISTA on mu*||X||_* + ||P_obs(X - A)||^2, run long: the reference optimum."""
    a = np.asarray(a, np.float64) * mask
    x = a.copy()
    y, t = x.copy(), 1.0
    for _ in range(iters):
        x_new = ref_svt(np.where(mask > 0, a, y), mu / 2)
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = x_new + (t - 1) / t_new * (x_new - x)
        x, t = x_new, t_new
    return x


def objective(x, a, mask, mu):
    x = np.asarray(x, np.float64)
    return mu * np.linalg.svd(x, compute_uv=False).sum() + np.sum((mask * (x - a)) ** 2)


def rank2(seed, m=M, n=N):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (m, 2)) @ rng.uniform(-1, 1, (2, n)) / 2
    return np.clip(a, -1, 1)


def bern(seed, shape, p):
    return (np.random.default_rng(seed).uniform(size=shape) < p).astype(np.float64)


def rel(x, y):
    return np.linalg.norm(np.asarray(x, np.float64) - y) / np.linalg.norm(y)


# --- solvers --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(M, N), (40, 24)])
def test_usvt_matches_coded_rule(shape):
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (3,) + shape)
    mask = bern(2, a.shape, 0.5)
    got = np.asarray(me.usvt(a * mask, mask))
    want = np.stack([ref_usvt(a[i], mask[i]) for i in range(3)])
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())


def test_usvt_chatterjee_threshold():
    a = rank2(3) * 3  # strong low-rank signal survives the textbook threshold
    mask = bern(4, a.shape, 0.5)
    p_hat = mask.mean()
    u, s, vt = np.linalg.svd(a * mask, full_matrices=False)
    keep = s >= 2.01 * np.sqrt(N * p_hat)
    assert 0 < keep.sum() < M
    want = (u[:, keep] * s[keep]) @ vt[keep] / p_hat
    got = np.asarray(me.usvt(a * mask, mask, threshold="chatterjee"))
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())


def test_softimpute_matches_fancyimpute_loop():
    rng = np.random.default_rng(5)
    a = rng.uniform(-1, 1, (2, M, N)) * 0.3 + rank2(6)
    mask = bern(7, a.shape, 0.5)
    got = np.asarray(me.softimpute(a * mask, mask))
    for i in range(2):
        assert rel(got[i], ref_softimpute(a[i] * mask[i], mask[i])) < 5e-3


def photo_matrices(num, p=0.5, seed=0):
    """[R|G|B] 32x96 matrices of real photo crops in [-1, 1] and a Bernoulli(p) mask."""
    tiles = photos.photo_tiles(num, seed=seed).astype(np.float64) * 2 - 1
    a = np.concatenate([tiles[..., c] for c in range(3)], axis=-1)
    return a, bern(seed + 100, a.shape, p)


def test_tracked_svt_matches_float64_svt_from_a_nearby_basis():
    from menet_jax.me import linalg

    a, _ = photo_matrices(6)
    lam = np.linalg.svd(a, compute_uv=False)[:, 0] / 50
    # The basis comes from a different matrix (noise of 2% of the entries' RMS added), as
    # between two Soft-Impute iterations.
    near = a + 0.01 * np.random.default_rng(1).normal(size=a.shape)
    u = np.linalg.eigh(near @ np.swapaxes(near, -1, -2))[1]
    basis = np.swapaxes(u, -1, -2)  # eigenvectors as rows
    x, shrunk, basis_new = linalg.tracked_svt(jnp.float32(a), jnp.float32(lam), jnp.float32(basis))
    for i in range(len(a)):
        want = ref_svt(a[i], lam[i])
        assert rel(x[i], want) < 1e-4
        s = np.linalg.svd(a[i], compute_uv=False)
        np.testing.assert_allclose(
            np.sort(np.asarray(shrunk[i], np.float64)),
            np.sort(np.maximum(s - lam[i], 0)),
            atol=1e-3 * s[0],
        )
    # The returned basis is orthonormal and diagonalises A A^T better than the one given (pairs
    # that stay below the threshold are left alone by design).
    u_new = np.swapaxes(np.asarray(basis_new, np.float64), -1, -2)
    np.testing.assert_allclose(
        u_new.swapaxes(-1, -2) @ u_new, np.broadcast_to(np.eye(M), u.shape), atol=1e-4
    )

    def off(v):
        h = v.swapaxes(-1, -2) @ a @ a.swapaxes(-1, -2) @ v
        return np.abs(h - h * np.eye(M)).max() / np.abs(h).max()

    assert off(u_new) < off(u) / 10


def test_top_singular_value_by_power_iteration():
    from menet_jax.me import linalg

    a, mask = photo_matrices(8, seed=4)
    a0 = a * mask
    want = np.linalg.svd(a0, compute_uv=False)[:, 0]
    rng = np.random.default_rng(2)
    starts = rng.normal(size=(8, M))
    # A start orthogonal to the top singular vector still converges.
    top = np.linalg.svd(a0[0])[0][:, 0]
    starts[0] -= (starts[0] @ top) * top
    got = linalg.top_singular_value(jnp.float32(a0), jnp.float32(starts))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4)
    assert float(linalg.top_singular_value(jnp.zeros((M, N)), jnp.zeros(M))) == 0.0


def test_softimpute_svt_modes_agree_with_float64_loop_on_photos():
    a, mask = photo_matrices(4, seed=3)
    for svt in ("tracked", "eigh"):
        out = np.asarray(me.softimpute(a * mask, mask, svt=svt))
        for i in range(len(a)):  # the fancyimpute iteration, to float32 rounding
            assert rel(out[i], ref_softimpute(a[i] * mask[i], mask[i])) < 1e-3


def test_accelerated_softimpute_is_closer_to_the_fixed_point_than_fancyimpute_stops():
    a, mask = photo_matrices(4, seed=3)
    obs = [(a[i] * mask[i], mask[i]) for i in range(len(a))]
    fixed = [ref_softimpute(*o, max_iters=3000, tol=1e-7) for o in obs]
    fancy = [rel(ref_softimpute(*o), f) for o, f in zip(obs, fixed, strict=True)]
    for svt in ("tracked", "eigh"):
        out = np.asarray(me.softimpute(a * mask, mask, svt=svt, accelerated=True))
        for i in range(len(a)):
            assert rel(out[i], fixed[i]) < fancy[i]


@pytest.mark.parametrize("accelerated", [False, True])
def test_softimpute_recovers_rank2(accelerated):
    a = np.stack([rank2(10), rank2(11)])
    mask = bern(12, a.shape, 0.5)
    zero_err = rel(a * mask, a)
    small = me.softimpute(
        a * mask, mask, shrinkage=0.005, max_iters=3000, tol=1e-7, accelerated=accelerated
    )
    assert rel(small, a) < 2e-2
    default = me.softimpute(a * mask, mask, accelerated=accelerated)
    assert rel(default, a) < zero_err / 2
    # Observed entries are returned unchanged.
    np.testing.assert_array_equal(np.asarray(default)[mask > 0], np.float32(a)[mask > 0])


def test_nucnorm_recovers_rank2():
    a = np.stack([rank2(20), rank2(21)])
    mask = bern(22, a.shape, 0.5)
    assert rel(me.nucnorm(a * mask, mask, mu=0.01, max_iters=3000, tol=1e-7), a) < 2e-2
    assert rel(me.nucnorm(a * mask, mask), a) < rel(a * mask, a) / 2


@pytest.mark.parametrize("mu", [1.0, 0.3])
def test_nucnorm_objective_near_optimum(mu):
    rng = np.random.default_rng(30)
    a = np.clip(rank2(31) + 0.2 * rng.uniform(-1, 1, (M, N)), -1, 1)
    mask = bern(32, a.shape, 0.5)
    x = np.asarray(me.nucnorm(a * mask, mask, mu=mu))
    f_ref = objective(ref_nucnorm_opt(a, mask, mu), a * mask, mask, mu)
    f = objective(x, a * mask, mask, mu)
    assert f >= f_ref * (1 - 1e-6)
    assert (f - f_ref) / f_ref < 1e-3
    assert abs(float(me.nucnorm_objective(x, a * mask, mask, mu=mu)) - f) / f < 1e-4


def test_nucnorm_within_1e3_of_cvxpy():
    cp = pytest.importorskip("cvxpy")
    a = np.clip(rank2(40) + 0.2 * np.random.default_rng(41).uniform(-1, 1, (M, N)), -1, 1)
    mask = bern(42, a.shape, 0.5)
    x = cp.Variable(a.shape)
    cost = cp.norm(x, "nuc") + cp.sum_squares(cp.multiply(mask, x - a * mask))
    cp.Problem(cp.Minimize(cost)).solve(solver=cp.SCS)
    f_cvx = objective(x.value, a * mask, mask, 1.0)
    f = objective(me.nucnorm(a * mask, mask), a * mask, mask, 1.0)
    assert (f - f_cvx) / f_cvx < 1e-3


def ref_softimpute_iterations(a, mask, max_iters=100, tol=1e-3):
    """How many SVT steps fancyimpute's loop (float64, exact sigma_max) takes to stop."""
    obs = mask > 0
    x = np.where(obs, a, 0.0).astype(np.float64)
    lam = np.linalg.svd(x, compute_uv=False)[0] / 50
    for k in range(1, max_iters + 1):
        z = ref_svt(x, lam)
        old = np.sqrt(np.sum(x[~obs] ** 2))
        converged = old > 0 and np.sqrt(np.sum((x[~obs] - z[~obs]) ** 2)) / old < tol
        x[~obs] = z[~obs]
        if converged:
            return k
    return max_iters


def ref_nucnorm_iterations(a, mask, mu=1.0, max_iters=100, tol=1e-3):
    """Steps of plain float64 proximal gradient from the zero fill until ||dX|| <= tol ||X||."""
    a0 = np.where(mask > 0, a, 0.0).astype(np.float64)
    x = a0.copy()
    for k in range(1, max_iters + 1):
        z = ref_svt(np.where(mask > 0, a0, x), mu / 2)
        if np.linalg.norm(z - x) <= tol * np.linalg.norm(x):
            return k
        x = z
    return max_iters


@pytest.mark.parametrize("tol", [1e-3, 1e-2])
def test_iteration_counts_match_float64_loops(tol):
    a, mask = photo_matrices(6, seed=8)
    for svt in ("tracked", "eigh"):
        est, iters = me.softimpute(a * mask, mask, tol=tol, svt=svt, return_iterations=True)
        want = [ref_softimpute_iterations(a[i] * mask[i], mask[i], tol=tol) for i in range(6)]
        assert iters.shape == (6,) and iters.dtype == jnp.int32
        # float32 vs float64 may cross the threshold one step apart on a borderline matrix.
        assert np.max(np.abs(np.asarray(iters) - want)) <= 1
        assert np.sum(np.asarray(iters) == want) >= 5
        np.testing.assert_array_equal(est, me.softimpute(a * mask, mask, tol=tol, svt=svt))
    _, iters = me.nucnorm(a * mask, mask, tol=tol, accelerated=False, return_iterations=True)
    want = [ref_nucnorm_iterations(a[i], mask[i], tol=tol) for i in range(6)]
    assert np.max(np.abs(np.asarray(iters) - want)) <= 1
    assert np.sum(np.asarray(iters) == want) >= 5


@pytest.mark.parametrize("solver", [me.softimpute, me.nucnorm])
def test_iteration_counts_capped_and_lane_independent(solver):
    a, mask = photo_matrices(5, seed=9)
    mask[2] = 1.0  # nothing to estimate in one matrix
    _, capped = solver(a * mask, mask, max_iters=3, return_iterations=True)
    _, loose = solver(a * mask, mask, tol=1e-2, return_iterations=True)
    _, tight = solver(a * mask, mask, tol=1e-3, return_iterations=True)
    _, lanes = solver(a * mask, mask, tol=1e-3, lanes=2, return_iterations=True)
    np.testing.assert_array_equal(capped, np.minimum(tight, 3))
    assert np.all(np.asarray(loose) <= np.asarray(tight))
    assert np.sum(np.asarray(loose) < np.asarray(tight)) >= 3
    np.testing.assert_array_equal(lanes, tight)
    if solver is me.softimpute:  # fancyimpute's rule: nothing missing, nothing to iterate
        assert int(tight[2]) == 0


def test_p_one_returns_input():
    a = np.random.default_rng(50).uniform(-1, 1, (2, M, N)).astype(np.float32)
    ones = np.ones_like(a)
    np.testing.assert_allclose(me.usvt(a, ones, rank_fraction=1.0), a, atol=1e-4)
    np.testing.assert_array_equal(me.softimpute(a, ones), a)
    img = np.random.default_rng(51).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    mask = me.sample_mask(jax.random.key(0), img.shape, 1.0)
    np.testing.assert_array_equal(mask, 1.0)
    rec = me.reconstruct(img, mask, method="softimpute")
    np.testing.assert_allclose(rec, img, atol=1e-6)


SOLVERS = {
    "usvt": me.usvt,
    "softimpute": me.softimpute,
    "softimpute_acc": lambda a, m: me.softimpute(a, m, accelerated=True),
    "nucnorm": me.nucnorm,
}


@pytest.mark.parametrize("name", SOLVERS)
def test_batched_equals_one_by_one_and_jit_equals_eager(name):
    fn = SOLVERS[name]
    rng = np.random.default_rng(60)
    a = (rng.uniform(-1, 1, (3, M, N)) * 0.3 + rank2(61)).astype(np.float32)
    mask = bern(62, a.shape, 0.4).astype(np.float32)
    batched = np.asarray(fn(a, mask))
    single = np.stack([np.asarray(fn(a[i], mask[i])) for i in range(3)])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    jitted = np.asarray(jax.jit(fn)(a, mask))
    np.testing.assert_allclose(jitted, batched, atol=1e-4)


@pytest.mark.parametrize("solver", [me.softimpute, me.nucnorm])
def test_lanes_refill_gives_same_result(solver):
    rng = np.random.default_rng(63)
    a = (rng.uniform(-1, 1, (5, M, N)) * 0.3 + rank2(64)).astype(np.float32)
    mask = bern(65, a.shape, 0.5).astype(np.float32)
    mask[2] = 1.0  # nothing to estimate in one matrix
    full = np.asarray(solver(a, mask))
    np.testing.assert_allclose(solver(a, mask, lanes=2), full, atol=1e-4)
    np.testing.assert_allclose(
        jax.jit(lambda x, m: solver(x, m, lanes=3))(a, mask), full, atol=1e-4
    )


@pytest.mark.parametrize("method", ["usvt", "softimpute", "nucnorm"])
def test_finite_on_degenerate_inputs(method):
    rng = np.random.default_rng(70)
    img = rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)
    img[3] = 0.0  # all-zero image
    mask = np.asarray(me.sample_mask(jax.random.key(1), img.shape, 0.05))
    mask = mask.copy()
    mask[1, 5, :, :] = 0  # all-missing matrix row
    mask[2, :, 7, 1] = 0  # all-missing matrix column
    mask[0] = 0  # nothing observed at all
    for m in (mask, np.zeros_like(mask)):
        out = np.asarray(me.reconstruct(img, m, method=method))
        assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
    zero = np.zeros((2, M, N), np.float32)
    est = np.asarray(SOLVERS[method](zero, bern(71, zero.shape, 0.5).astype(np.float32)))
    np.testing.assert_array_equal(est, 0.0)


# --- layouts and reconstruct ----------------------------------------------------------------


def test_concat_layout_is_rgb_side_by_side():
    img = np.random.default_rng(80).uniform(size=(2, 5, 4, 3)).astype(np.float32)
    mats = np.asarray(me.images_to_matrices(img, "concat"))
    np.testing.assert_array_equal(mats, np.concatenate([img[..., c] for c in range(3)], -1))
    np.testing.assert_array_equal(me.matrices_to_images(mats, img.shape, "concat"), img)
    sep = np.asarray(me.images_to_matrices(img, "separate"))
    np.testing.assert_array_equal(sep, np.moveaxis(img, -1, 1))
    np.testing.assert_array_equal(me.matrices_to_images(sep, img.shape, "separate"), img)


def test_reconstruct_matches_solver_in_both_layouts():
    img = np.random.default_rng(81).uniform(size=(2, 12, 10, 3)).astype(np.float32)
    key = jax.random.key(2)
    mask = np.asarray(me.sample_mask(key, img.shape, 0.6))
    a = 2 * img - 1
    want = np.stack([np.hstack([a[b, ..., c] for c in range(3)]) for b in range(2)])  # [R|G|B]
    m = np.stack([np.hstack([mask[b, ..., c] for c in range(3)]) for b in range(2)])
    est = np.stack([ref_usvt(want[b], m[b]) for b in range(2)])
    est = (np.clip(est, -1, 1) + 1) / 2
    rec = np.asarray(me.reconstruct(img, mask, method="usvt"))
    np.testing.assert_allclose(rec[..., 1], est[:, :, 10:20], atol=2e-3)

    smask = np.asarray(me.sample_mask(key, img.shape, 0.6, channels="separate"))
    assert np.all(smask == smask[..., :1])
    rec = np.asarray(me.reconstruct(img, smask, method="usvt", channels="separate"))
    for c in range(3):
        e = np.stack([ref_usvt(a[b, ..., c], smask[b, ..., c]) for b in range(2)])
        np.testing.assert_allclose(rec[..., c], (np.clip(e, -1, 1) + 1) / 2, atol=2e-3)


@pytest.mark.parametrize("channels", me.CHANNEL_MODES)
def test_grayscale_and_single_image(channels):
    img = np.random.default_rng(82).uniform(size=(28, 28, 1)).astype(np.float32)
    key = jax.random.key(3)
    rec = me.mask_and_reconstruct(key, img, 0.5, method="softimpute", channels=channels)
    assert rec.shape == img.shape and rec.dtype == jnp.float32
    mask = me.sample_mask(key, img.shape, 0.5, channels=channels)
    np.testing.assert_allclose(
        rec, me.reconstruct(img, mask, method="softimpute", channels=channels), atol=1e-6
    )
    np.testing.assert_array_equal(me.reconstruct(img, mask, method="none"), img)


def test_reconstruct_improves_photo_psnr():
    img = photos.photo_tiles(8, seed=1)
    mask = me.sample_mask(jax.random.key(4), img.shape, 0.5)

    def psnr(x):
        return 10 * np.log10(1 / np.mean((np.asarray(x, np.float64) - img) ** 2))

    zero = psnr(me.reconstruct(img, mask, method="none") * mask + 0.5 * (1 - mask))
    for method in ("softimpute", "nucnorm"):
        assert psnr(me.reconstruct(img, mask, method=method)) > zero + 5


def test_straight_through_grad_under_jit():
    img = jnp.asarray(np.random.default_rng(83).uniform(size=(2, 8, 8, 3)), jnp.float32)

    @jax.jit
    def loss(x, key, p):
        rec = me.mask_and_reconstruct(key, x, p, method="softimpute", accelerated=True)
        return jnp.sum(x + jax.lax.stop_gradient(rec - x))

    g = jax.grad(loss)(img, jax.random.key(5), jnp.array([0.5, 0.7]))
    np.testing.assert_array_equal(g, 1.0)


# --- masks and schedules --------------------------------------------------------------------


def test_sample_mask_rates_and_modes():
    shape = (4, 32, 32, 3)
    p = np.array([0.1, 0.4, 0.7, 1.0], np.float32)
    mask = np.asarray(me.sample_mask(jax.random.key(6), shape, p))
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    n = 32 * 32 * 3
    for i in range(4):
        assert abs(mask[i].mean() - p[i]) <= 5 * np.sqrt(p[i] * (1 - p[i]) / n) + 1e-9
    sep = np.asarray(me.sample_mask(jax.random.key(6), shape, 0.5, channels="separate"))
    assert np.all(sep == sep[..., :1])
    keys = jax.random.split(jax.random.key(7), 4)
    per = jax.vmap(lambda k, q: me.sample_mask(k, shape[1:], q))(keys, jnp.asarray(p))
    assert per.shape == shape
    # A traced p cannot be checked: it is clipped into (0, 1].
    traced = jax.jit(lambda q: me.sample_mask(jax.random.key(8), shape, q))
    np.testing.assert_array_equal(traced(1.5), 1.0)
    assert float(jnp.mean(traced(-1.0))) < 1e-3


def test_p_schedule_paper_example():
    np.testing.assert_allclose(me.p_schedule(0.6, 0.8, 10), np.arange(60, 80, 2) / 100, atol=1e-6)
    np.testing.assert_allclose(
        me.p_schedule(0.6, 0.8, 10, include_end=True), np.arange(62, 81, 2) / 100, atol=1e-6
    )
    assert me.p_schedule(0.5, 0.5, 3).dtype == np.float32


# --- bad input --------------------------------------------------------------------------------


def test_bad_input_raises_value_error():
    a = np.zeros((M, N), np.float32)
    img = np.zeros((2, 8, 8, 3), np.float32)
    key = jax.random.key(0)
    cases = [
        ("mask", lambda: me.usvt(a, np.ones((M, N + 1)))),
        ("mask", lambda: me.reconstruct(img, np.ones((2, 8, 8, 1)))),
        ("p", lambda: me.sample_mask(key, img.shape, 0.0)),
        ("p", lambda: me.sample_mask(key, img.shape, 1.5)),
        ("p", lambda: me.sample_mask(key, img.shape, [0.5, 1.2])),
        ("p", lambda: me.sample_mask(key, img.shape, [0.5, 0.5, 0.5])),
        ("p", lambda: me.mask_and_reconstruct(key, img, -0.1)),
        ("method", lambda: me.reconstruct(img, np.ones_like(img), method="svd")),
        ("channels", lambda: me.reconstruct(img, np.ones_like(img), channels="rgb")),
        ("channels", lambda: me.sample_mask(key, img.shape, 0.5, channels="rgb")),
        ("rank_fraction", lambda: me.usvt(a, a, rank_fraction=0.0)),
        ("rank_fraction", lambda: me.usvt(a, a, rank_fraction=1.5)),
        ("threshold", lambda: me.usvt(a, a, threshold="textbook")),
        ("shrinkage", lambda: me.softimpute(a, a, shrinkage=-1.0)),
        ("max_iters", lambda: me.softimpute(a, a, max_iters=0)),
        ("mu", lambda: me.nucnorm(a, a, mu=0.0)),
        ("lanes", lambda: me.nucnorm(a, a, lanes=0)),
        ("svt", lambda: me.softimpute(a, a, svt="svd")),
        ("svt", lambda: me.nucnorm(a, a, svt=None)),
        ("start", lambda: me.p_schedule(0.0, 0.8, 10)),
        ("end", lambda: me.p_schedule(0.6, 1.2, 10)),
        ("num_masks", lambda: me.p_schedule(0.6, 0.8, 0)),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=name):
            call()
