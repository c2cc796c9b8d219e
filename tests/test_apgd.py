"""Tests of menet_jax.attacks.apgd on tiny models.

References: the paper's checkpoint recurrence in exact fractions, the DLR formulas in float64
numpy, a one-example-at-a-time eager loop of the paper's Algorithm 1, closed forms on linear
models, and properties (eps-ball, [0, 1], one trace) that hold for any model.
"""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.attacks import apgd, margin
from menet_jax.attacks.apgd import _apgd_result, checkpoints
from menet_jax.attacks.losses import cross_entropy, dlr_loss, dlr_targeted_loss

SHAPE = (8, 8, 8, 1)  # B, H, W, C
D = 64


def _weights(seed, d=D, k=10, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal((d, k)).astype(np.float32)


W10 = jnp.asarray(_weights(0))


def linear10(x, key):
    """A fixed 10-class linear classifier on 8x8x1 images; ignores the key."""
    del key
    return x.reshape(x.shape[0], -1) @ W10


BOX = (3, 5, 5, 2)  # small images, two channels
W50 = jnp.asarray(_weights(4, d=50))


def masked_linear(x, key):
    """Randomised, on BOX images: each pixel kept with probability 0.7 (a mask from the key;
    none without one), then a 10-class linear layer."""
    if key is not None:
        x = x * jax.random.bernoulli(key, 0.7, x.shape).astype(x.dtype)
    return x.reshape(x.shape[0], -1) @ W50


A4 = jnp.asarray(_weights(1, k=4, scale=0.6))
B4 = jnp.asarray(_weights(2, k=4, scale=0.3))


def wavy(x, key):
    """A fixed nonlinear 4-class classifier whose losses oscillate along sign steps."""
    del key
    flat = x.reshape(x.shape[0], -1)
    return 2.0 * jnp.sin(3.0 * (flat @ A4)) + flat @ B4


def _data(seed=1, shape=SHAPE, fn=linear10):
    x = jax.random.uniform(jax.random.key(seed), shape, jnp.float32)
    y = jnp.argmax(fn(x, None), axis=-1)  # clean accuracy 100%
    return x, y


def _project(z, x, eps):
    return np.clip(np.clip(z, x - eps, x + eps), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# checkpoints and losses


def _paper_checkpoints(n):
    """{ceil(p_j * n) : j >= 1, p_j <= 1}, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(..., 0.06)."""
    p = [Fraction(0), Fraction(22, 100)]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100))
        if nxt > 1:
            break
        p.append(nxt)
    return sorted({math.ceil(pj * n) for pj in p[1:]})


@pytest.mark.parametrize("n", [1, 2, 7, 10, 37, 100, 250, 1000])
def test_checkpoints_follow_the_paper(n):
    assert sorted(set(checkpoints(n).tolist())) == _paper_checkpoints(n)
    # The same marks inside jit, from a traced step count.
    traced = jax.jit(checkpoints)(jnp.int32(n))
    np.testing.assert_array_equal(np.asarray(traced), checkpoints(n))


def test_checkpoints_by_hand():
    assert checkpoints(100).tolist() == [22, 41, 57, 70, 80, 87, 93, 99]
    # ceil(2.2), ceil(4.1), ceil(5.7), 7, 8, ceil(8.7), ceil(9.3), ceil(9.9): 10 twice.
    assert checkpoints(10).tolist() == [3, 5, 6, 7, 8, 9, 10, 10]


def _np_dlr(logits, y):
    s = np.sort(logits, axis=1)[:, ::-1]
    z_y = logits[np.arange(len(y)), y]
    other = np.where(np.eye(logits.shape[1], dtype=bool)[y], -np.inf, logits).max(axis=1)
    return -(z_y - other) / (s[:, 0] - s[:, 2] + 1e-12)


def _np_dlr_targeted(logits, y, t):
    s = np.sort(logits, axis=1)[:, ::-1]
    rows = np.arange(len(y))
    return -(logits[rows, y] - logits[rows, t]) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)


def test_dlr_losses_match_numpy():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((12, 6)) * 3
    # Ties: the true class tied for the top, two-way and three-way ties, all equal but one.
    logits[0, :2] = logits[0, 0]
    logits[1, [0, 3]] = 5.0
    logits[2, [1, 2, 4]] = 2.0
    logits[3] = 1.0
    logits[3, 5] = 0.0
    logits = logits.astype(np.float32).astype(np.float64)  # exactly representable in float32
    y = rng.integers(0, 6, 12)
    y[:4] = [1, 3, 0, 5]
    t = (y + 1 + rng.integers(0, 5, 12)) % 6
    lj, yj, tj = jnp.asarray(logits, jnp.float32), jnp.asarray(y), jnp.asarray(t)
    np.testing.assert_allclose(dlr_loss(lj, yj), _np_dlr(logits, y), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(
        dlr_targeted_loss(lj, yj, tj), _np_dlr_targeted(logits, y, t), rtol=2e-6, atol=1e-6
    )
    # Invariant to shifting and positively scaling the logits (rows 4.. have no tie in the
    # denominator, where the 1e-12 decides).
    np.testing.assert_allclose(
        dlr_loss(2.5 * lj + 7.0, yj)[4:], dlr_loss(lj, yj)[4:], rtol=1e-5, atol=1e-6
    )


def test_dlr_needs_enough_classes():
    logits, y = jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(logits[:, :2], y)
    with pytest.raises(ValueError, match="at least 4 classes"):
        dlr_targeted_loss(logits, y, y + 1)


# --------------------------------------------------------------------------------------------
# eps = 0, the eps-ball and [0, 1]

CONFIGS = {
    "ce": dict(loss="ce"),
    "dlr_eot2": dict(loss="dlr", eot_samples=2),
    "dlr_targeted_adversarial": dict(loss="dlr_targeted", return_best="adversarial"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eps_zero_returns_x(name):
    x, y = _data(0, BOX, masked_linear)
    out = apgd(masked_linear, x, y, jax.random.key(5), eps=0.0, steps=5, **CONFIGS[name])
    assert out.dtype == jnp.float32 and out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("eps, seed", [(0.03, 0), (0.3, 1), (0.6, 2)])
def test_results_stay_in_ball_and_box(name, eps, seed):
    x, y = _data(seed, BOX, masked_linear)
    x = x.at[:, 0].set(0.0).at[:, -1].set(1.0)  # pixels at 0 and 1 exercise the box
    out = np.asarray(
        apgd(masked_linear, x, y, jax.random.key(seed), eps=eps, steps=6, **CONFIGS[name])
    )
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.all(out >= 0.0) and np.all(out <= 1.0)
    assert np.all(np.abs(out - np.asarray(x)) <= np.float32(eps))  # float32 arithmetic, exact


# --------------------------------------------------------------------------------------------
# Algorithm 1, one example at a time


def _reference_apgd(fn, loss_fn, x, y, key, *, eps, steps, rho=0.75, alpha=0.75):
    """The paper's Algorithm 1 for a deterministic `fn`, eager, its logic one example at a time.

    Returns per example (best point, its loss, final step size, last misclassified iterate or
    None, whether the loss was ever exactly 1), from the key schedule of apgd's docstring (only
    the start depends on the key). The model is evaluated on the whole batch at once, as the
    attack does, so that an image's loss and gradient round alike in both (on a batch of one
    they differ by ~1e-5 here, enough to flip close comparisons). Where the true class ranks
    third, DLR is flat at exactly 1 and its gradient is rounding noise, which jit may round
    otherwise: such an example's path is not comparable.
    """
    marks = set(_paper_checkpoints(steps))
    k_start, _, _ = jax.random.split(key, 3)
    noise = np.asarray(jax.random.uniform(k_start, x.shape, jnp.float32, -eps, eps))
    x, y = np.asarray(x), np.asarray(y)

    @jax.jit
    def evaluate(z):
        def total(zz):
            logits = fn(zz, None)
            per_example = loss_fn(logits, y)
            return jnp.sum(per_example), (per_example, logits)

        (_, (f, logits)), g = jax.value_and_grad(total, has_aux=True)(z)
        return f, g, jnp.argmax(logits, axis=-1) != y

    def at(points):
        f, g, wrong = evaluate(jnp.asarray(np.stack(points)))
        return [float(v) for v in f], list(np.asarray(g)), [bool(w) for w in wrong]

    n = x.shape[0]
    cur = [_project(x[i] + noise[i], x[i], eps) for i in range(n)]
    f, g, wrong = at(cur)
    prev, eta = list(cur), [2 * np.float32(eps)] * n
    best, f_best, g_best = list(cur), list(f), list(g)
    adv = [c if w else None for c, w in zip(cur, wrong, strict=True)]
    flat = [v == 1.0 for v in f]
    increases, halved_last, f_best_last = [0] * n, [True] * n, list(f_best)
    last_mark = 0
    for k in range(steps):
        a = np.float32(1.0 if k == 0 else alpha)
        new = []
        for i in range(n):
            z = _project(cur[i] + eta[i] * np.sign(g[i]), x[i], eps)
            step = cur[i] + a * (z - cur[i]) + (1 - a) * (cur[i] - prev[i])
            new.append(_project(step, x[i], eps))
        f_new, g_new, wrong = at(new)
        for i in range(n):
            flat[i] |= f_new[i] == 1.0
            increases[i] += f_new[i] > f[i]
            if f_new[i] > f_best[i]:
                best[i], f_best[i], g_best[i] = new[i], f_new[i], g_new[i]
            if wrong[i]:
                adv[i] = new[i]
            prev[i], cur[i], f[i], g[i] = cur[i], new[i], f_new[i], g_new[i]
            if k + 1 in marks:
                halve = increases[i] < rho * (k + 1 - last_mark) or (
                    not halved_last[i] and f_best[i] == f_best_last[i]
                )
                if halve:
                    eta[i] = eta[i] / 2
                    cur[i], f[i], g[i] = best[i], f_best[i], g_best[i]
                increases[i], halved_last[i], f_best_last[i] = 0, halve, f_best[i]
        if k + 1 in marks:
            last_mark = k + 1
    return list(zip(best, f_best, eta, adv, flat, strict=True))


@pytest.mark.parametrize("loss, loss_fn", [("ce", cross_entropy), ("dlr", dlr_loss)])
def test_matches_one_example_reference(loss, loss_fn):
    x, y = _data(8, (8, 8, 8, 1), wavy)
    key = jax.random.key(2)
    opts = dict(eps=0.01, steps=24)
    got = _apgd_result(wavy, x, y, key, loss=loss, **opts)
    adversarial = np.asarray(apgd(wavy, x, y, key, loss=loss, return_best="adversarial", **opts))
    ref = _reference_apgd(wavy, loss_fn, x, y, key, **opts)
    best, best_loss, etas, advs, flat = zip(*ref, strict=True)
    best, best_loss, etas = np.stack(best), np.float32(best_loss), np.float32(etas)
    on = ~np.array(flat)  # the examples whose path is comparable
    assert on.sum() >= 6, "too many examples on DLR's plateau to compare"
    # The run exercised both branches: step sizes were halved, not all equally often.
    assert np.all(etas < 2 * opts["eps"]) and len(set(etas[on].tolist())) > 1, etas
    np.testing.assert_array_equal(np.asarray(got.step_size)[on], etas[on])
    np.testing.assert_allclose(np.asarray(got.best)[on], best[on], atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.best_loss)[on], best_loss[on], rtol=1e-5)
    # Both results of return_best="adversarial" occur: some iterates fooled the model, not all.
    fooled = np.array([a is not None for a in advs])
    assert fooled[on].any() and not fooled[on].all()
    np.testing.assert_array_equal(np.asarray(got.fooled)[on], fooled[on])
    for i in np.flatnonzero(on):
        expected = best[i] if advs[i] is None else advs[i]
        np.testing.assert_allclose(adversarial[i], expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Strength: closed forms on linear models, step-size halving


def _two_class(w, b):
    def fn(x, key):
        return x.reshape(x.shape[0], -1) @ w + b

    return fn


def _rank_dlr_model(u, b):
    """Logits [u.x + b, 0, -100]: for y = 0, DLR is strictly decreasing in the margin u.x + b."""

    def fn(x, key):
        s = x.reshape(x.shape[0], -1) @ u + b
        return jnp.stack([s, jnp.zeros_like(s), jnp.full_like(s, -100.0)], axis=-1)

    return fn


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_linear_model_reaches_closed_form_worst_case(loss):
    # The true-class margin is linear, c.x' + d, so its minimum over the eps-ball and [0, 1]
    # is at a vertex: x' = x - eps * sign(c), clipped.
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.uniform(0, 1, (6, 8, 8, 1)).astype(np.float32))
    x = x.at[:, 0].set(0.0).at[:, -1].set(1.0)  # pixels at 0 and 1 exercise the box
    if loss == "ce":
        w = jnp.asarray(_weights(5, k=2, scale=0.2))
        b = jnp.asarray([0.3, -0.2], jnp.float32)
        fn = _two_class(w, b)
        y = jnp.argmax(fn(x, None), axis=-1)
        c = np.asarray(w)[:, np.asarray(y)] - np.asarray(w)[:, 1 - np.asarray(y)]  # [D, B]
        d = np.asarray(b)[np.asarray(y)] - np.asarray(b)[1 - np.asarray(y)]
    else:
        u = jnp.asarray(_weights(5, k=1, scale=0.2)[:, 0])
        fn = _rank_dlr_model(u, 4.0)
        y = jnp.zeros((6,), jnp.int32)
        c = np.repeat(np.asarray(u)[:, None], 6, axis=1)
        d = np.full(6, 4.0)
    eps = 0.1
    flat = np.asarray(x, np.float64).reshape(6, -1)
    lo, hi = np.maximum(flat - eps, 0.0), np.minimum(flat + eps, 1.0)
    worst = np.sum(np.minimum(c.T * lo, c.T * hi), axis=1) + d
    assert np.all(worst < np.asarray(margin(fn(x, None), y)) - 0.5)  # the attack has work to do
    out = apgd(fn, x, y, jax.random.key(3), eps=eps, steps=20, loss=loss)
    np.testing.assert_allclose(np.asarray(margin(fn(out, None), y)), worst, atol=1e-4)
    vertex = np.where(c.T > 0, lo, hi).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(out), vertex, atol=1e-6)


def _peak_apply(height, x, key):
    """Two classes; the class-0 cross-entropy peaks where the image mean is 0.27 (flat if 0)."""
    del key
    s = jnp.mean(x.reshape(x.shape[0], -1), axis=-1)
    return jnp.stack([jnp.zeros_like(s), -height * (s - 0.27) ** 2], axis=-1)


def test_step_size_halves_where_progress_stalls():
    x = jnp.zeros((2, 2, 2, 1), jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    opts = dict(eps=1.0, steps=100, random_start=False)
    # A flat loss never rises: every one of the 8 checkpoints halves the step size.
    flat = jax.tree_util.Partial(_peak_apply, jnp.float32(0.0))
    result = _apgd_result(flat, x, y, jax.random.key(0), **opts)
    np.testing.assert_array_equal(np.asarray(result.step_size), 2.0 / 2**8)
    # A peak: steps of 2 * eps overshoot it back and forth until halving homes in on it.
    peak = jax.tree_util.Partial(_peak_apply, jnp.float32(10.0))
    result = _apgd_result(peak, x, y, jax.random.key(0), **opts)
    assert np.all(np.asarray(result.step_size) < 2.0 * opts["eps"])
    np.testing.assert_allclose(np.asarray(result.best), 0.27, atol=0.005)


# --------------------------------------------------------------------------------------------
# EOT


def test_eot_changes_nothing_on_a_deterministic_model():
    x, y = _data()
    key = jax.random.key(4)
    one = _apgd_result(linear10, x, y, key, eps=0.05, steps=10)
    # Two equal draws average exactly (a + a) / 2 = a, so every decision is the same.
    two = _apgd_result(linear10, x, y, key, eps=0.05, steps=10, eot_samples=2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def noisy_linear10(x, key):
    """Randomised: linear logits plus Gaussian noise of standard deviation 3 per draw."""
    logits = linear10(x, None)
    return logits + 3.0 * jax.random.normal(key, logits.shape)


def test_eot_finds_points_stronger_against_fresh_draws():
    x, y = _data(3, (16, 8, 8, 1))
    key = jax.random.key(7)
    # 200 fresh draws of the model's noise, none of which the attack saw (numpy's generator:
    # the same distribution as the model's, and cheap).
    fresh = 3.0 * np.random.default_rng(0).standard_normal((200, 16, 10))

    def mean_margin(z):  # per example, over the fresh draws
        logits = np.asarray(linear10(z, None), np.float64)[None] + fresh
        true = logits[:, np.arange(16), np.asarray(y)]
        other = np.where(np.eye(10, dtype=bool)[np.asarray(y)], -np.inf, logits).max(axis=-1)
        return np.mean(true - other, axis=0)

    single = mean_margin(apgd(noisy_linear10, x, y, key, eps=0.05, steps=50, eot_samples=1))
    eot = mean_margin(apgd(noisy_linear10, x, y, key, eps=0.05, steps=50, eot_samples=20))
    assert np.mean(eot) < np.mean(single) - 0.1, (np.mean(eot), np.mean(single))
    assert np.mean(eot < single) >= 0.75, eot - single


# --------------------------------------------------------------------------------------------
# Targeted DLR


def test_targeted_dlr_pushes_to_the_target():
    x, y = _data()
    logits = np.asarray(linear10(x, None))
    others = np.where(np.eye(10, dtype=bool)[np.asarray(y)], -np.inf, logits)
    ranked = np.argsort(-others, axis=1, kind="stable")  # other classes, highest first
    opts = dict(eps=0.3, steps=30, loss="dlr_targeted")
    rows = np.arange(len(y))

    # Explicit targets: the 5th-ranked other class, no easy neighbour, reachable in the ball.
    target = jnp.asarray(ranked[:, 4], jnp.int32)
    assert np.all(logits[rows, ranked[:, 4]] < logits[rows, np.asarray(y)])
    c = np.asarray(W10)[:, ranked[:, 4]] - np.asarray(W10)[:, np.asarray(y)]  # [D, B]
    flat = np.asarray(x, np.float64).reshape(len(y), -1)
    lo, hi = np.maximum(flat - 0.3, 0.0), np.minimum(flat + 0.3, 1.0)
    assert np.all(np.sum(np.maximum(c.T * lo, c.T * hi), axis=1) > 1.0)
    out = np.asarray(linear10(apgd(linear10, x, y, jax.random.key(1), target=target, **opts), None))
    assert np.all(out[rows, ranked[:, 4]] > out[rows, np.asarray(y)])  # the target overtook y

    # target=None picks the class ranked target_rank - 1 among the others at the clean point.
    auto = apgd(linear10, x, y, jax.random.key(1), target_rank=6, **opts)
    np.testing.assert_array_equal(
        np.asarray(auto),
        np.asarray(apgd(linear10, x, y, jax.random.key(1), target=ranked[:, 4], **opts)),
    )


# --------------------------------------------------------------------------------------------
# jit: one trace per static configuration, argument errors


def test_traces_once_per_static_configuration():
    traces = {"n": 0}

    def apply(w, x, key):
        traces["n"] += 1  # runs only while tracing
        return masked_linear(x, key) + x.reshape(x.shape[0], -1)[:, :10] @ w

    x, y = _data(0, BOX, masked_linear)
    x2, _ = _data(9, BOX, masked_linear)
    calls = [
        (x, 0, 0.1, 5, 0.75, 0.75, 2, jnp.zeros((10, 10))),
        (x2, 1, 0.2, 9, 0.5, 0.6, 3, jnp.ones((10, 10))),
    ]
    for i, (xx, seed, eps, steps, rho, momentum, rank, w) in enumerate(calls):
        fn = jax.tree_util.Partial(apply, w)  # new weights, same shapes
        apgd(
            fn,
            xx,
            y,
            jax.random.key(seed),
            eps=eps,
            steps=steps,
            loss="dlr_targeted",
            eot_samples=2,
            rho=rho,
            momentum=momentum,
            target_rank=rank,
        ).block_until_ready()
        if i == 0:
            after_first = traces["n"]
            assert after_first > 0
    assert traces["n"] == after_first, "apgd retraced for new values of the same shapes"


def _bad(**kwargs):
    x, y = _data()
    opts = dict(eps=0.1, steps=2)
    opts.update(kwargs)
    return lambda: apgd(linear10, x, y, jax.random.key(0), **opts)


@pytest.mark.parametrize(
    "call, match",
    [
        (_bad(eps=-0.1), "eps must be a finite number >= 0"),
        (_bad(steps=0), "steps must be an integer >= 1"),
        (_bad(steps=2.5), "steps must be an integer >= 1"),
        (_bad(eot_samples=0), "eot_samples must be an integer >= 1"),
        (_bad(rho=1.5), r"rho must be a number in \[0, 1\]"),
        (_bad(momentum=-0.1), r"momentum must be a number in \[0, 1\]"),
        (_bad(loss="cw"), "loss must be one of"),
        (_bad(return_best="last"), "return_best must be one of"),
        (_bad(loss="dlr_targeted", target=jnp.zeros((3,), jnp.int32)), "target must be integer"),
        (_bad(loss="dlr_targeted", target=jnp.zeros((8,))), "target must be integer"),
        (_bad(loss="dlr_targeted", target=jnp.full((8,), 10)), r"classes in \[0, 10\)"),
        (_bad(loss="dlr_targeted", target_rank=11), r"target_rank must be in \[2, 10\]"),
        (_bad(loss="dlr_targeted", target_rank=1), "target_rank must be an integer >= 2"),
        (_bad(loss="ce", target=jnp.zeros((8,), jnp.int32)), "only used by loss='dlr_targeted'"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_target_equal_to_label_and_too_few_classes_raise():
    x, y = _data()
    with pytest.raises(ValueError, match="other than y"):
        apgd(linear10, x, y, jax.random.key(0), eps=0.1, loss="dlr_targeted", target=y)
    zeros = jnp.zeros((8,), jnp.int32)
    three = _rank_dlr_model(jnp.zeros((D,)), 1.0)
    with pytest.raises(ValueError, match="'dlr_targeted' needs at least 4 classes, got .* 3"):
        apgd(three, x, zeros, jax.random.key(0), eps=0.1, loss="dlr_targeted")
    two = _two_class(jnp.zeros((D, 2)), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="'dlr' needs at least 3 classes, got .* 2"):
        apgd(two, x, zeros, jax.random.key(0), eps=0.1, loss="dlr")
