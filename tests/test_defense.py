"""The defended classifier: every logits function against a direct computation or a property."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import attacks, defense, input_pipeline, me, preprocess, recipe
from tests.test_train import tiny_config


@pytest.fixture(scope="module")
def clf():
    c = tiny_config()
    info = input_pipeline.get_info(c.dataset)
    model = recipe.create_model(c, info)
    return defense.DefendedClassifier.from_model(model, c, info.num_classes)


@pytest.fixture(scope="module")
def images():
    x, _ = input_pipeline.load_split("mnist_5k", "test")
    return input_pipeline.to_float(x[:6])


def test_network_and_menet_are_the_model_on_the_right_input(clf, images):
    key = jax.random.key(3)
    direct = jax.jit(lambda x: clf.apply(clf.state, x, None, mode="network"))(images)
    np.testing.assert_allclose(direct, clf.network(images), rtol=1e-6)
    mask = me.sample_mask(key, images.shape, clf.inference_p)
    rec = me.reconstruct(images, mask, method="usvt")  # the documented mask of `key`
    np.testing.assert_allclose(clf.apply(clf.state, images, key), clf.network(rec), atol=1e-5)
    with pytest.raises(ValueError, match="mode must be one of"):
        clf.apply(clf.state, images, key, mode="nope")


def test_fixed_mask_ignores_the_attack_key(clf, images):
    k_mask = jax.random.key(7)
    fn = clf.logits_fn("fixed_mask", mask_key=k_mask)
    a, b = fn(images, jax.random.key(1)), fn(images, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, clf.apply(clf.state, images, k_mask), rtol=1e-6)
    assert not np.allclose(a, clf.apply(clf.state, images, jax.random.key(8)))


def test_vote_is_the_fraction_of_masks_per_class(clf, images):
    key, k = jax.random.key(5), 4
    votes = np.asarray(clf.apply(clf.state, images, key, mode="vote", votes=k))
    ps = defense.vote_ps(clf.config.me, k)
    counts = np.zeros_like(votes)
    for i, kk in enumerate(jax.random.split(key, k)):
        pred = np.argmax(clf.apply(clf.state, images, kk, p=ps[i]), -1)
        counts[np.arange(len(pred)), pred] += 1
    np.testing.assert_allclose(votes, counts / k, atol=1e-6)


def test_vote_soft_is_the_log_of_the_mean_probability_over_the_vote_masks(clf, images):
    key, k = jax.random.key(5), 4
    soft = np.asarray(clf.apply(clf.state, images, key, mode="vote_soft", votes=k), np.float64)
    ps = defense.vote_ps(clf.config.me, k)
    probs = []
    for i, kk in enumerate(jax.random.split(key, k)):  # the same k masks as the vote
        z = np.asarray(clf.apply(clf.state, images, kk, p=ps[i]), np.float64)
        e = np.exp(z - z.max(-1, keepdims=True))
        probs.append(e / e.sum(-1, keepdims=True))
    np.testing.assert_allclose(soft, np.log(np.mean(probs, 0)), atol=1e-5)
    # Differentiable (BPDA through ME): a finite, non-zero input gradient.
    fn = clf.logits_fn("vote_soft", votes=k, gradient="bpda")
    g = jax.grad(lambda x: jnp.sum(attacks.cross_entropy(fn(x, key), jnp.zeros(6, int))))(images)
    assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_solver_options_reach_both_iterative_solvers():
    c = tiny_config(**{"me.method": "nucnorm", "me.tol": 1e-4, "me.max_iters": 30})
    assert dict(preprocess.from_config(c.me).options) == {"mu": 1.0, "max_iters": 30, "tol": 1e-4}
    c.me.accelerated = False  # reaches nucnorm too (None keeps each solver's default)
    assert dict(preprocess.from_config(c.me).options)["accelerated"] is False
    c.me.method, c.me.accelerated = "softimpute", True
    assert dict(preprocess.from_config(c.me).options) == {
        "max_iters": 30,
        "tol": 1e-4,
        "accelerated": True,
    }


def test_bpda_gradient_is_the_network_gradient_at_the_reconstruction(clf, images):
    key = jax.random.key(2)
    fn = clf.logits_fn("menet", gradient="bpda")
    g = jax.grad(lambda z: fn(z, key)[:, 0].sum())(images)
    rec = clf.preprocess(images, key)
    g_ref = jax.grad(lambda z: clf.network(z)[:, 0].sum())(rec)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


def test_logits_fn_is_cached_and_follows_a_replaced_classifier(clf, images):
    assert clf.logits_fn("menet").func is clf.logits_fn("menet").func
    assert clf.logits_fn("menet").func is not clf.logits_fn("network").func
    # At p = 1 nothing is masked, so two keys give the same logits; at 0.49 they differ.
    full = dataclasses.replace(clf, inference_p=1.0)
    f_full, f = full.logits_fn("menet"), clf.logits_fn("menet")
    k1, k2 = jax.random.key(1), jax.random.key(2)
    np.testing.assert_array_equal(f_full(images, k1), f_full(images, k2))
    assert not np.array_equal(f(images, k1), f(images, k2))


def test_attacks_trace_once_for_one_classifier(clf, images):
    fresh = dataclasses.replace(clf)
    traces = {"n": 0}
    network = fresh._network

    def counted(*args):
        traces["n"] += 1  # runs only while tracing
        return network(*args)

    object.__setattr__(fresh, "_network", counted)
    y = jnp.zeros((len(images),), jnp.int32)
    kw = {"eps": 0.1, "step_size": 0.05, "steps": 2}
    attacks.pgd(fresh.logits_fn("menet"), images, y, jax.random.key(0), **kw)
    after_first = traces["n"]
    attacks.pgd(fresh.logits_fn("menet"), images + 0.01, y, jax.random.key(1), **kw)
    assert after_first > 0 and traces["n"] == after_first


def test_batchnorm_mode_option():
    c = tiny_config(model="resnet18")
    info = input_pipeline.get_info("cifar10")
    c.dataset = "cifar10"
    model = recipe.create_model(c, info)
    clf = defense.DefendedClassifier.from_model(model, c, info.num_classes)
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    other = x.at[1:].set(0.0)  # same first image, other companions
    for bn, same in (("eval", True), ("train", False)):
        a = clf.apply(clf.state, x, None, mode="network", bn=bn)[0]
        b = clf.apply(clf.state, other, None, mode="network", bn=bn)[0]
        assert np.allclose(a, b, atol=1e-5) == same, bn
