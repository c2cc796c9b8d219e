"""Tests of menet_jax.attacks on tiny models (cleverhans' pattern).

References are closed forms on linear models, plain-Python loops written from the documented
key schedule, and properties (eps-ball, [0, 1], monotonicity) that hold for any model.
"""

import collections
import pathlib
from functools import partial

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.attacks import boundary, cw_l2, fgsm, linf_distance, margin, pgd, spsa
from menet_jax.attacks.boundary import (
    _adversarial_fn,
    _initial_walk,
    _propose,
    _push,
    _walk_step,
)
from menet_jax.attacks.linf import project_linf
from menet_jax.attacks.losses import cross_entropy, cw_loss

SHAPE = (8, 8, 8, 1)  # B, H, W, C
D = 64
K = 10


def _weights(seed, d=D, k=K, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal((d, k)).astype(np.float32)


W10 = jnp.asarray(_weights(0))


def linear10(x, key):
    """A fixed 10-class linear classifier on 8x8x1 images; ignores the key."""
    del key
    return x.reshape(x.shape[0], -1) @ W10


def masked_linear10(x, key):
    """Randomized: each pixel kept with probability 0.7 (a mask from the key), then linear."""
    mask = jax.random.bernoulli(key, 0.7, x.shape).astype(x.dtype)
    return (x * mask).reshape(x.shape[0], -1) @ W10


def any_shape(x, key):
    """A fixed nonlinear 3-class classifier on images of any shape; ignores the key."""
    del key
    flat = x.reshape(x.shape[0], -1)
    d = jnp.arange(flat.shape[1], dtype=jnp.float32)[:, None]
    w = jnp.sin(1.3 * d + 2.1 * jnp.arange(3, dtype=jnp.float32)[None, :] + 0.4)
    return jnp.tanh(flat @ w) * 3.0 + flat @ w


def masked_any_shape(x, key):
    """Randomized `any_shape`: each pixel kept with probability 0.7 (a mask from the key)."""
    return any_shape(x * jax.random.bernoulli(key, 0.7, x.shape).astype(x.dtype), None)


SMALL = (3, 3, 5, 3)


def _data(seed=1, shape=SHAPE, fn=linear10):
    x = jax.random.uniform(jax.random.key(seed), shape, jnp.float32)
    y = jnp.argmax(fn(x, None), axis=-1)  # clean accuracy 100%
    return x, y


def _accuracy(fn, x, y):
    return float(jnp.mean(jnp.argmax(fn(x, None), axis=-1) == y))


ALL_BOUNDED = {
    "fgsm": lambda fn, x, y, k, eps: fgsm(fn, x, y, k, eps=eps),
    "pgd": lambda fn, x, y, k, eps: pgd(fn, x, y, k, eps=eps, step_size=0.05, steps=3),
    "pgd_cw_eot_restarts_best": lambda fn, x, y, k, eps: pgd(
        fn,
        x,
        y,
        k,
        eps=eps,
        step_size=0.05,
        steps=3,
        loss="cw",
        kappa=2.0,
        restarts=2,
        eot_samples=2,
        keep_best=True,
    ),
    "spsa": lambda fn, x, y, k, eps: spsa(
        fn, x, y, k, eps=eps, steps=3, samples=8, batch_samples=4, learning_rate=0.05
    ),
}


# --------------------------------------------------------------------------------------------
# losses


def test_losses_match_numpy():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 5)).astype(np.float64) * 3
    y = rng.integers(0, 5, 6)
    z_y = logits[np.arange(6), y]
    other = np.where(np.eye(5, dtype=bool)[y], -np.inf, logits).max(axis=1)
    ce = -(z_y - np.log(np.exp(logits).sum(axis=1)))
    lj, yj = jnp.asarray(logits, jnp.float32), jnp.asarray(y)
    np.testing.assert_allclose(margin(lj, yj), z_y - other, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cross_entropy(lj, yj), ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        cw_loss(lj, yj, 1.0), -np.maximum(z_y - other, -1.0), rtol=1e-5, atol=1e-5
    )


# --------------------------------------------------------------------------------------------
# eps = 0 and the eps-ball


@pytest.mark.parametrize("name", sorted(ALL_BOUNDED))
def test_eps_zero_changes_nothing(name):
    x, y = _data(0, SMALL, any_shape)
    out = ALL_BOUNDED[name](masked_any_shape, x, y, jax.random.key(5), 0.0)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
    eps=st.floats(0.0, 0.6),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(sorted(ALL_BOUNDED)),
)
def test_results_stay_in_ball_and_box(eps, seed, name):
    # One shape, so each attack compiles once for this test and the eps = 0 one.
    x, y = _data(seed, SMALL, any_shape)
    # Images touching 0 and 1 exercise the box constraint.
    x = x.at[:, 0].set(0.0).at[:, -1].set(1.0)
    out = np.asarray(ALL_BOUNDED[name](masked_any_shape, x, y, jax.random.key(seed), eps))
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.all(out >= 0.0) and np.all(out <= 1.0)
    # In float32 arithmetic exactly; in float64 up to float32 rounding of eps.
    assert np.all(np.abs(out - np.asarray(x)) <= np.float32(eps))
    assert np.all(np.abs(out.astype(np.float64) - np.asarray(x, np.float64)) <= eps + 1e-7)


# --------------------------------------------------------------------------------------------
# FGSM closed form, PGD strength, CW margin


def test_fgsm_equals_closed_form_on_binary_linear_model():
    w = jnp.asarray(_weights(7, k=2, scale=0.05))

    def binary(x, key):
        return x.reshape(x.shape[0], -1) @ w

    x, y = _data(2, fn=binary)
    eps = 0.1
    out = fgsm(binary, x, y, jax.random.key(0), eps=eps)
    wn = np.asarray(w, np.float64)
    y_np = np.asarray(y)
    direction = np.sign(wn[:, 1 - y_np] - wn[:, y_np]).T.reshape(x.shape)  # w_wrong - w_y
    expected = np.clip(np.asarray(x, np.float64) + eps * direction, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)


def test_pgd_drives_linear_model_to_zero_accuracy():
    x, y = _data()
    out = pgd(linear10, x, y, jax.random.key(0), eps=0.3, step_size=0.05, steps=20)
    assert _accuracy(linear10, x, y) == 1.0
    assert _accuracy(linear10, out, y) == 0.0
    # FGSM at a tiny eps leaves it mostly intact: the strength comes from eps, not a bug.
    small = fgsm(linear10, x, y, jax.random.key(0), eps=1e-3)
    assert _accuracy(linear10, small, y) >= 0.75


def test_cw_margin_reaches_kappa():
    x, y = _data()
    kappa = 5.0
    out = pgd(
        linear10,
        x,
        y,
        jax.random.key(0),
        eps=1.0,
        step_size=0.02,
        steps=100,
        loss="cw",
        kappa=kappa,
        random_start=False,  # a random start in so large a ball could begin beyond kappa
    )
    m = np.asarray(margin(linear10(out, None), y))
    assert np.all(m <= -kappa + 1e-4), m
    # The loss is flat beyond kappa, so PGD stops there: the margin overshoots -kappa by at most
    # one step's change, 0.02 * (||w_y||_1 + max_j ||w_j||_1), unlike cross-entropy PGD.
    l1 = np.abs(np.asarray(W10)).sum(axis=0)
    one_step = 0.02 * (l1[np.asarray(y)] + l1.max())
    assert np.all(m >= -kappa - one_step - 1e-3), m
    ce = pgd(
        linear10, x, y, jax.random.key(0), eps=1.0, step_size=0.02, steps=100, random_start=False
    )
    assert np.all(np.asarray(margin(linear10(ce, None), y)) < -kappa - one_step)


# --------------------------------------------------------------------------------------------
# PGD options: plain PGD reference, keep_best, restarts, EOT


def _reference_pgd(fn, x, y, key, *, eps, step_size, steps):
    """Plain L-inf PGD from the key schedule in pgd's docstring, eager, one step at a time."""
    k_attack, _ = jax.random.split(key)
    k_start, k_steps = jax.random.split(jax.random.fold_in(k_attack, 0))
    z = jnp.clip(x + jax.random.uniform(k_start, x.shape, jnp.float32, -eps, eps), 0.0, 1.0)
    for t in range(steps):
        k = jax.random.split(jax.random.fold_in(k_steps, t), 1)[0]
        g = jax.grad(lambda zz, k=k: jnp.sum(cross_entropy(fn(zz, k), y)))(z)
        z = jnp.clip(jnp.clip(z + step_size * jnp.sign(g), x - eps, x + eps), 0.0, 1.0)
    return z


def test_eot1_no_keep_best_equals_plain_pgd():
    x, y = _data()
    key = jax.random.key(11)
    opts = dict(eps=0.1, step_size=0.02, steps=6)
    out = pgd(masked_linear10, x, y, key, eot_samples=1, keep_best=False, **opts)
    ref = _reference_pgd(masked_linear10, x, y, key, **opts)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(pgd(masked_linear10, x, y, key, **opts))
    )
    # The key matters for a randomized model (else the comparison above proves little).
    other = pgd(masked_linear10, x, y, jax.random.key(12), **opts)
    assert not np.allclose(np.asarray(out), np.asarray(other))


def peaked(x, key):
    """Two classes; the class-0 cross-entropy peaks where the image mean is 0.27."""
    del key
    s = jnp.mean(x.reshape(x.shape[0], -1), axis=-1)
    return jnp.stack([jnp.zeros_like(s), -10.0 * (s - 0.27) ** 2], axis=-1)


def test_keep_best_returns_best_iterate():
    # Constant images at 0 and signed steps of 0.12 visit means 0, .12, .24, .36, .24, .36:
    # the loss peaks at .27, so the best iterate (.24) beats the last one (.36).
    x = jnp.zeros((2, 2, 2, 1), jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    opts = dict(eps=1.0, step_size=0.12, steps=5, random_start=False)
    last = pgd(peaked, x, y, jax.random.key(0), keep_best=False, **opts)
    best = pgd(peaked, x, y, jax.random.key(0), keep_best=True, **opts)
    np.testing.assert_allclose(np.asarray(last), 0.36, atol=1e-5)
    np.testing.assert_allclose(np.asarray(best), 0.24, atol=1e-5)
    loss = lambda z: np.asarray(cross_entropy(peaked(z, None), y))  # noqa: E731
    assert np.all(loss(best) > loss(last))


def test_keep_best_loss_is_max_over_iterates():
    x, y = _data(fn=any_shape, shape=(6, 4, 4, 1))
    opts = dict(eps=0.4, step_size=0.15, steps=5, random_start=False)
    best = pgd(any_shape, x, y, jax.random.key(0), keep_best=True, **opts)
    # Every iterate from an independent eager loop (deterministic model: keys irrelevant).
    z, losses = x, []
    for _ in range(opts["steps"]):
        losses.append(cross_entropy(any_shape(z, None), y))
        g = jax.grad(lambda zz: jnp.sum(cross_entropy(any_shape(zz, None), y)))(z)
        z = project_linf(z + opts["step_size"] * jnp.sign(g), x, opts["eps"])
    losses.append(cross_entropy(any_shape(z, None), y))
    best_loss = np.asarray(cross_entropy(any_shape(best, None), y))
    np.testing.assert_allclose(best_loss, np.max(np.stack(losses), axis=0), rtol=1e-5, atol=1e-5)
    assert np.all(best_loss >= np.asarray(losses[-1]) - 1e-6)


def test_restarts_never_worse_per_example():
    x, y = _data(4, (16, 4, 4, 1), any_shape)
    key = jax.random.key(3)
    opts = dict(eps=0.15, step_size=0.1, steps=2, loss="cw", kappa=1.0)
    one = pgd(any_shape, x, y, key, restarts=1, **opts)
    three = pgd(any_shape, x, y, key, restarts=3, **opts)

    def score(z):
        logits = any_shape(z, None)
        return np.asarray(jnp.argmax(logits, -1) != y), np.asarray(cw_loss(logits, y, 1.0))

    (s1, l1), (s3, l3) = score(one), score(three)
    assert np.all(s3 | ~s1), "a successful example became unsuccessful"
    same = s3 == s1
    assert np.all(l3[same] >= l1[same] - 1e-6)
    assert np.any(s3 & ~s1) or np.any(l3 > l1 + 1e-6), "restarts changed nothing here"


def _flip_model(w, v):
    """Logits [0, w.x + s v.x] with one random sign s per call: E[gradient] is along w."""

    def fn(x, key):
        s = jax.random.rademacher(key, (), jnp.float32)
        flat = x.reshape(x.shape[0], -1)
        z1 = flat @ w + s * (flat @ v)
        return jnp.stack([jnp.zeros_like(z1), z1], axis=-1)

    return fn


def test_eot_follows_expected_gradient():
    rng = np.random.default_rng(5)
    w = rng.choice([-1.0, 1.0], 16).astype(np.float32) * rng.uniform(0.5, 1.0, 16).astype(
        np.float32
    )
    v = np.where(np.arange(16) < 8, -1.5 * w, 0.0).astype(np.float32)  # flips half the pixels
    fn = _flip_model(jnp.asarray(w), jnp.asarray(v))
    x = jnp.full((4, 4, 4, 1), 0.5, jnp.float32)
    y = jnp.zeros((4,), jnp.int32)
    # CW loss with a huge kappa is linear here: loss = w.x + s v.x, gradient w + s v.
    opts = dict(eps=0.1, step_size=0.1, steps=1, random_start=False, loss="cw", kappa=1e6)
    expected = 0.5 + 0.1 * np.sign(w).reshape(1, 4, 4, 1)
    out = pgd(fn, x, y, jax.random.key(0), eot_samples=64, **opts)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(expected, x.shape), atol=1e-6)
    # Single samples follow sign(w + s v): on the flipped half, -sign(w) whenever s = +1.
    singles = [np.asarray(pgd(fn, x, y, jax.random.key(i), **opts)) for i in range(8)]
    assert any(not np.allclose(s, np.broadcast_to(expected, x.shape)) for s in singles)


# --------------------------------------------------------------------------------------------
# SPSA and Boundary


def test_spsa_reduces_accuracy_on_linear_model():
    x, y = _data()
    out = spsa(
        linear10,
        x,
        y,
        jax.random.key(0),
        eps=0.3,
        steps=10,
        samples=32,
        batch_samples=16,
        learning_rate=0.05,
    )
    assert _accuracy(linear10, out, y) <= 0.25
    assert np.mean(np.asarray(margin(linear10(out, None), y))) < np.mean(
        np.asarray(margin(linear10(x, None), y))
    )


@pytest.mark.parametrize("proposals", [1, 5])
def test_boundary_finds_adversarials_closer_over_steps(proposals):
    x, y = _data()
    key = jax.random.key(2)
    runs = [boundary(linear10, x, y, key, steps=s, proposals=proposals) for s in (0, 100, 400)]
    dists = [np.asarray(linf_distance(x, r)) for r in runs]
    for r in runs:
        r = np.asarray(r)
        assert np.all((r >= 0) & (r <= 1))
    found = dists[0] > 0
    assert found.sum() >= 6, "no adversarial start for most examples"
    for r in runs:
        assert np.all(np.argmax(np.asarray(linear10(r, None)), -1)[found] != np.asarray(y)[found])
    # Non-increasing per example (same keys, so runs share a prefix) and clearly smaller.
    assert np.all(dists[1] <= dists[0] + 1e-7) and np.all(dists[2] <= dists[1] + 1e-7)
    assert np.mean(dists[2][found]) < 0.7 * np.mean(dists[0][found])
    # Examples with no adversarial start come back unchanged.
    np.testing.assert_array_equal(np.asarray(runs[2])[~found], np.asarray(x)[~found])


# Made by boundary() at commit ffd1f1d, before `proposals` existed: x, y and xs, ys are the inputs,
# the other arrays its outputs for the calls in `_SINGLE_PROPOSAL_CALLS`.
_BEFORE_PROPOSALS = pathlib.Path(__file__).parent / "data" / "boundary_single_proposal.npz"
_SINGLE_PROPOSAL_CALLS = {
    "linear10_k2_s150": (linear10, "x", 2, dict(steps=150)),
    "masked_k3_s150": (masked_linear10, "x", 3, dict(steps=150)),
    "anyshape_k4_s80": (masked_any_shape, "xs", 4, dict(steps=80)),
    "linear10_k5_s300_w3": (
        linear10,
        "x",
        5,
        dict(steps=300, spherical_window=3, step_window=2, stats_every=4),
    ),
}


@pytest.mark.parametrize("name", sorted(_SINGLE_PROPOSAL_CALLS))
def test_boundary_one_proposal_is_the_walk_before_proposals(name):
    saved = np.load(_BEFORE_PROPOSALS)
    fn, inputs, seed, opts = _SINGLE_PROPOSAL_CALLS[name]
    x, y = saved[inputs], saved["y" if inputs == "x" else "ys"]
    out = np.asarray(boundary(fn, x, y, jax.random.key(seed), proposals=1, **opts))
    assert np.any(out != x), "the saved walk moved nothing: the comparison would prove little"
    # Within float32 rounding, not bit for bit: XLA:CPU's code follows the host's instruction set
    # (another host of this project, an AMD EPYC, rounded up to 1e-6 away from the recording).
    np.testing.assert_allclose(out, saved[name], atol=1e-5, rtol=0)


def test_boundary_more_proposals_come_closer():
    x, y = _data()
    y_np = np.asarray(y)
    for seed in (0, 1):
        means = {}
        for proposals in (1, 25):
            out = boundary(linear10, x, y, jax.random.key(seed), steps=100, proposals=proposals)
            assert np.all(np.argmax(np.asarray(linear10(out, None)), -1) != y_np)
            l2 = np.linalg.norm((np.asarray(out) - np.asarray(x)).reshape(x.shape[0], -1), axis=1)
            means[proposals] = l2.mean()
        # 25 candidates per step find an accepted one far more often: clearly closer.
        assert means[25] < 0.8 * means[1], means


def stripes(x, key):
    """Two classes alternating in narrow bands of the image mean: no convex class regions."""
    del key
    s = jnp.sin(150.0 * jnp.mean(x.reshape(x.shape[0], -1), axis=-1))
    return jnp.stack([jnp.zeros_like(s), s], axis=-1)


@pytest.mark.parametrize("t", [0, 9])  # step 9 is a statistics step (every 10th)
def test_boundary_step_takes_the_first_good_proposal(t):
    # One walk step against a loop over the proposals, keys as the module docstring gives them.
    x, y = _data(0, (16, 4, 4, 1), stripes)
    flat_x = np.asarray(x).reshape(x.shape[0], -1)
    start = np.asarray(jax.random.uniform(jax.random.key(10), flat_x.shape))
    is_adv = jax.jit(_adversarial_fn(stripes, x.shape, y))
    found = np.asarray(is_adv(jnp.asarray(start), None))
    proposals, k_walk = 6, jax.random.key(0)
    walk = _initial_walk(jnp.asarray(start), jnp.asarray(flat_x), 0.5, 0.2, 100, 30)
    step = partial(
        _walk_step,
        is_adv=is_adv,
        flat_x=jnp.asarray(flat_x),
        found=jnp.asarray(found),
        k_walk=k_walk,
        step_adaptation=1.5,
        stats_every=10,
        windows=(100, 30),
        proposals=proposals,
    )
    new = jax.jit(step)(jnp.int32(t), walk)
    k_t = jax.random.fold_in(k_walk, t)
    sizes = (walk.sizes.spherical, walk.sizes.source)  # [B] each
    expected, taken = start.copy(), np.zeros(x.shape[0], bool)
    gated_out = 0  # adversarial, closer candidates whose spherical point was not adversarial
    propose = jax.jit(_propose)
    for i in range(proposals):
        k_eta, _, _ = jax.random.split(k_t if i == 0 else jax.random.fold_in(k_t, i), 3)
        dist, spherical, cand = (np.asarray(a) for a in propose(flat_x, start, *sizes, k_eta))
        good = np.asarray(is_adv(jnp.asarray(cand), None)) & found & ~taken
        good &= np.linalg.norm(flat_x - cand, axis=1) < dist
        if t == 9:  # foolbox 1.x: on statistics steps the spherical point must be adversarial
            spherical_adv = np.asarray(is_adv(jnp.asarray(spherical), None))
            gated_out += np.sum(good & ~spherical_adv)
            good &= spherical_adv
        expected[good], taken = cand[good], taken | good
    assert taken.sum() >= 3, "too few accepted proposals for the comparison to mean much"
    assert t != 9 or gated_out >= 1, "the spherical condition changed nothing here"
    np.testing.assert_allclose(np.asarray(new.best), expected, atol=1e-6)


def test_push_keeps_the_last_window_records_like_a_deque():
    rng = np.random.default_rng(0)
    batch, window, k = 3, 7, 5
    buffer = jnp.zeros((batch, window), jnp.float32)
    count = jnp.zeros((batch,), jnp.int32)
    deques = [collections.deque(maxlen=window) for _ in range(batch)]
    pushed = np.zeros(batch, int)
    for _ in range(6):
        values = rng.uniform(size=(batch, k)).astype(np.float32)
        valid = rng.uniform(size=(batch, k)) < 0.6
        buffer, count = _push(buffer, count, jnp.asarray(values), jnp.asarray(valid))
        pushed += valid.sum(axis=1)
        for b in range(batch):
            deques[b].extend(values[b][valid[b]])
    np.testing.assert_array_equal(np.asarray(count), pushed)
    for b in range(batch):
        padded = list(deques[b]) + [0.0] * (window - len(deques[b]))
        np.testing.assert_array_equal(np.sort(np.asarray(buffer[b])), np.sort(padded))


def test_boundary_returns_x_when_nothing_is_adversarial():
    def constant(x, key):
        return jnp.tile(jnp.array([[5.0, 0.0]]), (x.shape[0], 1))

    x = jax.random.uniform(jax.random.key(0), (3, 4, 4, 1))
    y = jnp.zeros((3,), jnp.int32)
    out = boundary(constant, x, y, jax.random.key(1), steps=5, init_tries=3)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


# --------------------------------------------------------------------------------------------
# jit: one trace per shape, pytree logits_fn, argument errors


def test_each_attack_traces_once_for_two_calls():
    traces = {"n": 0}

    def counted(x, key):
        traces["n"] += 1  # runs only while tracing
        return linear10(x, key)

    x, y = _data()
    x2, _ = _data(9)
    calls = {
        "fgsm": lambda xx, k, e: fgsm(counted, xx, y, k, eps=e),
        "pgd": lambda xx, k, e: pgd(
            counted,
            xx,
            y,
            k,
            eps=e,
            step_size=0.01,
            steps=int(e * 100),
            restarts=2,
            eot_samples=2,
            keep_best=True,
        ),
        "spsa": lambda xx, k, e: spsa(
            counted, xx, y, k, eps=e, steps=int(e * 50), samples=8, batch_samples=4
        ),
        "boundary": lambda xx, k, e: boundary(counted, xx, y, k, steps=int(e * 50)),
        "boundary_one_proposal": lambda xx, k, e: boundary(
            counted, xx, y, k, steps=int(e * 50), proposals=1
        ),
        "cw_l2": lambda xx, k, e: cw_l2(
            counted, xx, y, k, confidence=e, steps=int(e * 50), learning_rate=e, initial_const=e
        ),
    }
    for name, call in calls.items():
        call(x, jax.random.key(0), 0.1).block_until_ready()
        after_first = traces["n"]
        assert after_first > 0
        call(x2, jax.random.key(1), 0.2).block_until_ready()
        assert traces["n"] == after_first, f"{name} retraced for new values of the same shape"


def test_pytree_logits_fn_passes_params_as_arguments():
    traces = {"n": 0}

    def apply(w, x, key):
        traces["n"] += 1
        return x.reshape(x.shape[0], -1) @ w

    x, y = _data()
    outs = []
    for seed in (0, 1):
        fn = jax.tree_util.Partial(apply, jnp.asarray(_weights(seed)))
        outs.append(pgd(fn, x, y, jax.random.key(0), eps=0.1, step_size=0.02, steps=3))
    assert traces["n"] == 1  # a second weight matrix of the same shape did not retrace
    np.testing.assert_array_equal(
        np.asarray(outs[0]),
        np.asarray(pgd(linear10, x, y, jax.random.key(0), eps=0.1, step_size=0.02, steps=3)),
    )
    assert not np.array_equal(np.asarray(outs[0]), np.asarray(outs[1]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, y, k: fgsm(linear10, x, y, k, eps=-0.1), "eps"),
        (lambda x, y, k: pgd(linear10, x, y, k, eps=0.1, step_size=0.1, steps=-1), "steps"),
        (
            lambda x, y, k: pgd(linear10, x, y, k, eps=0.1, step_size=0.1, steps=1, loss="l2"),
            "loss",
        ),
        (
            lambda x, y, k: pgd(linear10, x, y, k, eps=0.1, step_size=0.1, steps=1, restarts=0),
            "restarts",
        ),
        (lambda x, y, k: spsa(linear10, x, y, k, eps=0.1, samples=10, batch_samples=4), "samples"),
        (lambda x, y, k: boundary(linear10, x, y, k, step_adaptation=1.0), "step_adaptation"),
        (lambda x, y, k: boundary(linear10, x, y, k, proposals=0), "proposals"),
        (lambda x, y, k: cw_l2(linear10, x, y, k, confidence=-1.0), "confidence"),
        (lambda x, y, k: cw_l2(linear10, x, y, k, binary_search_steps=0), "binary_search_steps"),
        (lambda x, y, k: cw_l2(linear10, x, y, k, learning_rate=0.0), "learning_rate"),
        (lambda x, y, k: cw_l2(linear10, x, y, k, initial_const=-1.0), "initial_const"),
        (lambda x, y, k: fgsm(linear10, x, y, jax.random.PRNGKey(0), eps=0.1), "key"),
        (lambda x, y, k: fgsm(linear10, x[0], y, k, eps=0.1), "x must be"),
        (lambda x, y, k: fgsm(linear10, x, y[:3], k, eps=0.1), "y must be"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        call(x, y, jax.random.key(0))


def test_fgsm_gradient_uses_the_given_key():
    x, y = _data()
    a = fgsm(masked_linear10, x, y, jax.random.key(0), eps=0.05)
    b = fgsm(masked_linear10, x, y, jax.random.key(0), eps=0.05)
    c = fgsm(masked_linear10, x, y, jax.random.key(1), eps=0.05)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
