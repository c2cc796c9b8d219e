"""Tests of menet_jax.attacks.cw_l2 on linear models.

References: the closed-form minimal L2 adversarial of a linear two-class model, and a float64
numpy loop written from the module docstring (Adam, abort rule, binary search, key schedule).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.attacks import cw_l2, margin

SHAPE = (8, 8, 8, 1)  # B, H, W, C
D = 64
RNG = np.random.default_rng(0)
W2 = (0.5 * RNG.standard_normal((D, 2))).astype(np.float32)
W10 = RNG.standard_normal((D, 10)).astype(np.float32)


def linear2(x, key):
    del key
    return x.reshape(x.shape[0], -1) @ jnp.asarray(W2)


def linear10(x, key):
    del key
    return x.reshape(x.shape[0], -1) @ jnp.asarray(W10)


def noisy_linear10(x, key):
    """Randomized: `linear10` plus standard normal noise on the logits, drawn from the key."""
    return linear10(x, None) + jax.random.normal(key, (x.shape[0], 10), x.dtype)


def _data(fn, seed=1, low=0.0, high=1.0):
    x = jax.random.uniform(jax.random.key(seed), SHAPE, jnp.float32, low, high)
    return x, jnp.argmax(fn(x, None), axis=-1)


def _l2(a, b):
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.linalg.norm(diff.reshape(diff.shape[0], -1), axis=1)


@pytest.mark.parametrize("kappa", [0.0, 2.0])
def test_matches_closed_form_on_linear_two_class_model(kappa):
    # The margin is g.x with g = w_y - w_other: the closest point of margin -kappa lies at
    # distance (margin + kappa) / ||g||, inside the box for images away from 0 and 1.
    x, y = _data(linear2, low=0.3, high=0.7)
    out = cw_l2(linear2, x, y, jax.random.key(0), confidence=kappa, steps=200, learning_rate=1e-2)
    w = W2.astype(np.float64)
    g = np.where(np.asarray(y)[:, None] == 0, w[:, 0] - w[:, 1], w[:, 1] - w[:, 0])
    flat_x = np.asarray(x, np.float64).reshape(SHAPE[0], -1)
    m0 = np.sum(flat_x * g, axis=1)
    expected = (m0 + kappa) / np.linalg.norm(g, axis=1)
    optimum = flat_x - ((m0 + kappa) / np.sum(g * g, axis=1))[:, None] * g
    assert np.all((optimum > 0.01) & (optimum < 0.99)), "the box would bind: no closed form"
    ratio = _l2(out, x) / expected
    assert np.all(ratio >= 1 - 1e-4) and np.all(ratio <= 1.03), ratio
    assert np.all(np.asarray(margin(linear2(out, None), y)) <= -kappa)


def test_confidence_sets_the_final_margin():
    x, y = _data(linear10)
    for kappa in (0.0, 5.0):
        out = cw_l2(
            linear10, x, y, jax.random.key(0), confidence=kappa, steps=200, learning_rate=1e-2
        )
        out_np = np.asarray(out)
        assert out.dtype == jnp.float32 and out.shape == x.shape
        assert np.all((out_np >= 0) & (out_np <= 1))
        m = np.asarray(margin(linear10(out, None), y))
        # Adversarial with margin kappa, and not far beyond it: the distance is minimised.
        assert np.all(np.argmax(np.asarray(linear10(out, None)), -1) != np.asarray(y))
        assert np.all(m <= -kappa) and np.all(m >= -kappa - 0.1), m


def test_misclassified_criterion_keeps_the_closest_misclassified_iterate():
    # foolbox 1.x judged iterates by misclassification alone: the confidence steers the path,
    # but the result is the closest misclassified iterate, margin just below 0.
    x, y = _data(linear10)
    opts = dict(confidence=5.0, steps=100, learning_rate=1e-2)
    loose = cw_l2(linear10, x, y, jax.random.key(0), confident_only=False, **opts)
    strict = cw_l2(linear10, x, y, jax.random.key(0), **opts)
    m = np.asarray(margin(linear10(loose, None), y))
    assert np.all(np.argmax(np.asarray(linear10(loose, None)), -1) != np.asarray(y))
    assert np.all((m < 0) & (m > -1.0)), m
    assert np.all(_l2(loose, x) < _l2(strict, x))


def test_returns_x_where_nothing_succeeds():
    def constant(x, key):
        del key
        return jnp.tile(jnp.array([[5.0, 0.0]]), (x.shape[0], 1)) + 0 * jnp.sum(x)

    x = jax.random.uniform(jax.random.key(0), SHAPE)
    y = jnp.zeros((SHAPE[0],), jnp.int32)
    out = cw_l2(constant, x, y, jax.random.key(1), steps=5, binary_search_steps=2)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    x10, y10 = _data(linear10)
    out = cw_l2(linear10, x10, y10, jax.random.key(1), steps=0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x10))


def _reference_cw(x, y, key, *, kappa, steps, binary_search_steps, lr, const, abort_early):
    """CW-L2 on `noisy_linear10` from the module docstring: float64 numpy, eager loops."""
    batch = x.shape[0]
    w_lin = W10.astype(np.float64)
    flat_x = np.asarray(x, np.float64).reshape(batch, -1)
    y = np.asarray(y)
    w0 = np.arctanh((2 * flat_x - 1) * 0.999999)
    x0 = (np.tanh(w0) + 1) / 2
    const = np.full(batch, const)
    lower, upper = np.zeros(batch), np.full(batch, np.inf)
    best, best_d = flat_x.copy(), np.full(batch, np.inf)
    rows = np.arange(batch)
    for s in range(binary_search_steps):
        if s == binary_search_steps - 1 and binary_search_steps >= 10:
            const = np.minimum(upper, 1e10)
        w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
        active, checked = np.ones(batch, bool), np.full(batch, np.inf)
        succeeded = np.zeros(batch, bool)
        for i in range(steps):
            if not active.any():
                break
            k = jax.random.fold_in(jax.random.fold_in(key, s), i)
            noise = np.asarray(jax.random.normal(k, (batch, 10)), np.float64)
            z = (np.tanh(w) + 1) / 2
            logits = z @ w_lin + noise
            other_logits = np.where(np.eye(10, dtype=bool)[y], -np.inf, logits)
            other = np.argmax(other_logits, axis=1)
            mg = logits[rows, y] - logits[rows, other]
            loss = np.sum((z - x0) ** 2, axis=1) + const * np.maximum(mg + kappa, 0)
            success = active & (np.argmax(logits, axis=1) != y) & (mg <= -kappa)
            d = np.sum((z - flat_x) ** 2, axis=1)
            closer = success & (d < best_d)
            best[closer], best_d[closer] = z[closer], d[closer]
            succeeded |= success
            hinge = (mg + kappa > 0)[:, None] * (w_lin[:, y] - w_lin[:, other]).T
            grad = (2 * (z - x0) + const[:, None] * hinge) * (1 - np.tanh(w) ** 2) / 2
            m_new = 0.9 * m + 0.1 * grad
            v_new = 0.999 * v + 0.001 * grad**2
            m_hat, v_hat = m_new / (1 - 0.9 ** (i + 1)), v_new / (1 - 0.999 ** (i + 1))
            w_new = w - lr * m_hat / (np.sqrt(v_hat) + 1e-7)
            a = active[:, None]
            w, m, v = np.where(a, w_new, w), np.where(a, m_new, m), np.where(a, v_new, v)
            if abort_early and i % int(np.ceil(steps / 10)) == 0:
                active &= loss <= 0.9999 * checked
                checked = loss
        upper = np.where(succeeded, const, upper)
        lower = np.where(succeeded, lower, const)
        const = np.where(np.isinf(upper), const * 10, (lower + upper) / 2)
    return np.where(np.isfinite(best_d)[:, None], best, flat_x).reshape(x.shape)


@pytest.mark.parametrize("abort_early", [True, False])  # the results differ on these inputs
def test_matches_numpy_reference_on_randomized_model(abort_early):
    x, y = _data(linear10)
    x, y = x[:4], y[:4]
    opts = dict(steps=30, binary_search_steps=3, abort_early=abort_early)
    key = jax.random.key(3)
    out = cw_l2(
        noisy_linear10, x, y, key, confidence=1.0, learning_rate=0.05, initial_const=0.1, **opts
    )
    ref = _reference_cw(x, y, key, kappa=1.0, lr=0.05, const=0.1, **opts)
    # Every example moved: x itself was not already a success under the noise.
    assert np.all(_l2(ref, x) > 0.05), "the reference found nothing: it would prove little"
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5)
    # The key feeds the model: another key draws other masks and gives another result.
    other = cw_l2(
        noisy_linear10,
        x,
        y,
        jax.random.key(4),
        confidence=1.0,
        learning_rate=0.05,
        initial_const=0.1,
        **opts,
    )
    assert not np.allclose(np.asarray(out), np.asarray(other))
