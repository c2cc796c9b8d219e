"""The preprocessing registry: a defence registered here (a 3x3 blur of the masked image, written
below) reaches config validation, `bench train --method`, S', training, adversarial training and
the defended classifier's BPDA and exact gradients, checked against a float64 numpy reference; a
method the config cannot run is one line on stderr and exit 1 before any work."""

from __future__ import annotations

import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import config, defense, input_pipeline, preprocess, recipe, rng, sprime, train
from menet_jax.bench import train as bench_train
from menet_jax.config import ConfigError
from tests.test_train import ROOT, _run_main, tiny_config


def _box3(a: jax.Array) -> jax.Array:
    """The mean of each pixel's 3x3 neighbourhood (zero outside the image), per channel."""
    h, w = a.shape[-3], a.shape[-2]
    p = jnp.pad(a, [(0, 0)] * (a.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
    return sum(p[..., i : i + h, j : j + w, :] for i in range(3) for j in range(3)) / 9.0


def blur(a: jax.Array, mask: jax.Array, *, differentiable: bool = False) -> jax.Array:
    """A purification defence in one line: blur the masked image (linear, so exactly
    differentiable as written; the flag changes nothing)."""
    del mask, differentiable
    return _box3(a)


def box3_np(a: np.ndarray) -> np.ndarray:
    """`_box3` in float64 numpy, written again with explicit shifts."""
    a = np.asarray(a, np.float64)
    out = np.zeros_like(a)
    h, w = a.shape[-3], a.shape[-2]
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            src = a[..., max(di, 0) : h + min(di, 0), max(dj, 0) : w + min(dj, 0), :]
            out[..., max(-di, 0) : h + min(-di, 0), max(-dj, 0) : w + min(-dj, 0), :] += src
    return out / 9.0


def reference(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The blur defence's output: [0,1] -> [-1,1], masked, blurred, clipped, back to [0,1]."""
    est = box3_np(np.asarray(mask, np.float64) * (2.0 * np.asarray(x, np.float64) - 1.0))
    return (np.clip(est, -1.0, 1.0) + 1.0) / 2.0


@pytest.fixture(scope="module", autouse=True)
def registered():
    preprocess.register(preprocess.Method("blur", blur, differentiable=True, matrices=False))
    # The same defence registered without an exact gradient: BPDA only.
    preprocess.register(preprocess.Method("blur_bpda", blur, matrices=False))
    yield
    preprocess.unregister("blur")
    preprocess.unregister("blur_bpda")


@pytest.fixture(scope="module")
def images():
    x, _ = input_pipeline.load_split("mnist_5k", "test")
    return input_pipeline.to_float(x[:4])


def test_builtin_methods_and_their_inference_keys():
    assert preprocess.names()[:4] == ("none", "usvt", "softimpute", "nucnorm")
    assert preprocess.inference_keys()[:9] == (
        "method", "channels", "rank_fraction", "threshold", "shrinkage", "max_iters", "tol",
        "accelerated", "mu",
    )  # fmt: skip
    assert all(preprocess.get(m).differentiable for m in ("none", "usvt", "softimpute", "nucnorm"))
    with pytest.raises(ValueError, match="method must be one of"):
        preprocess.get("svd")


def test_a_registered_method_is_a_valid_config_value_until_unregistered():
    config.validate(tiny_config(**{"me.method": "blur"}))
    assert "blur" in config.ME["method"].allowed()
    args, c = bench_train._parse(["--method", "blur", "--config", "configs/mnist_demo.py"])
    assert c.me.method == "blur"
    preprocess.unregister("blur")
    try:
        with pytest.raises(ConfigError, match=r"config\.me\.method='blur' is not allowed"):
            config.validate(tiny_config(**{"me.method": "blur"}))
    finally:
        preprocess.register(preprocess.Method("blur", blur, differentiable=True, matrices=False))


def test_reconstruction_and_gradients_match_the_numpy_reference(images):
    c = tiny_config(**{"me.method": "blur"})
    pre = preprocess.from_config(c.me)
    key, p = jax.random.key(5), 0.5
    mask = np.asarray(pre.sample_mask(key, images.shape, p))
    assert 0.3 < mask.mean() < 0.7
    want = reference(images, mask)
    np.testing.assert_allclose(pre.transform()(key, images, p), want, atol=1e-6)
    w = np.asarray(jax.random.normal(jax.random.key(6), images.shape))

    def grad(gradient):
        fn = pre.transform(gradient=gradient)
        return np.asarray(jax.grad(lambda x: jnp.sum(w * fn(key, x, p)))(images))

    # d/dx sum(w * (B(m * (2x - 1)) + 1) / 2) = m * B^T w, and the box filter is symmetric.
    np.testing.assert_allclose(grad("exact"), mask * box3_np(w), atol=1e-5)
    np.testing.assert_array_equal(grad("bpda"), w)  # straight through: the identity


def test_defended_classifier_bpda_and_exact_gradients(images):
    c = tiny_config(**{"me.method": "blur"})
    info = input_pipeline.get_info(c.dataset)
    clf = defense.DefendedClassifier.from_model(recipe.create_model(c, info), c, info.num_classes)
    key = jax.random.key(7)
    mask = np.asarray(preprocess.from_config(c.me).sample_mask(key, images.shape, clf.inference_p))
    rec = jnp.asarray(reference(images, mask), jnp.float32)
    np.testing.assert_allclose(clf.defended(images, key), clf.network(rec), atol=1e-5)
    g_net = np.asarray(jax.grad(lambda z: clf.network(z)[:, 0].sum())(rec))

    def grad(gradient):
        fn = clf.logits_fn("menet", gradient=gradient)
        return np.asarray(jax.grad(lambda x: fn(x, key)[:, 0].sum())(images))

    np.testing.assert_allclose(grad("bpda"), g_net, atol=1e-5)
    np.testing.assert_allclose(grad("exact"), mask * box3_np(g_net), atol=1e-5)
    # Registered without an exact gradient: BPDA works, exact is refused in one sentence.
    c2 = tiny_config(**{"me.method": "blur_bpda"})
    clf2 = defense.DefendedClassifier.from_model(recipe.create_model(c2, info), c2, 10)
    assert np.all(np.isfinite(jax.grad(lambda x: clf2.defended(x, key, bpda=True).sum())(images)))
    with pytest.raises(ValueError, match="'blur_bpda' has no exact gradient"):
        clf2.logits_fn("menet", gradient="exact")(images, key)


def test_sprime_training_and_adversarial_training_use_the_registered_method(tmp_path):
    c = tiny_config(num_train_examples=8, **{"me.method": "blur", "me.build_batch_size": 8})
    data = train.load_data(c)
    cached = sprime.build(c, data.train_images, str(tmp_path / "s"))
    ps = preprocess.from_config(c.me).training_ps()
    for e in (0, 5, 15):  # entry e is copy k = e % 2 of image i = e // 2, its mask from (i, k)
        i, k = e // 2, e % 2
        key = rng.example_keys(c.seed, jnp.array([i]), jnp.array([k]))[0]
        mask = preprocess.from_config(c.me).sample_mask(key, data.train_images.shape[1:], ps[k])
        want = np.round(reference(data.train_images[i] / 255.0, mask) * 255.0)
        np.testing.assert_allclose(cached[e].astype(np.float64), want, atol=1.0)
    for name, extra in (("online", {"me.mode": "online"}), ("adv", {"adv.enabled": True})):
        run = tiny_config(num_train_steps=2, **{"me.method": "blur", "adv.steps": 1, **extra})
        summary = train.train_and_evaluate(run, str(tmp_path / name))
        assert summary["steps"] == 2 and 0.0 <= summary["clean_accuracy"] <= 1.0, name


def test_the_fixed_mask_row_is_skipped_for_a_method_without_an_exact_gradient():
    """The evaluation's fixed-mask sanity row attacks with exact gradients: for a method that
    has none it is skipped with the reason, not run and failed."""
    from menet_jax.evaluation import rows, settings

    ev = settings.eval_config()
    for exact in (True, False):
        target = types.SimpleNamespace(
            preprocessed=True,
            randomized=True,
            has_exact_gradient=exact,
            gradient="bpda",
            whitebox=None,
            network=None,
            lacks=lambda need: f"no {need}",
        )
        plan = rows.Plan(ev, target, None, 8)
        rows._sanity(plan, ev.sanity)
        assert plan.has("no_me_pgd") and plan.has("fixed_mask_pgd") == exact
        assert ("fixed_mask_pgd" in plan.skipped) == (not exact)


def _run_main_with_bpda_only_method(*args):
    """`python -m menet_jax.main ARGS` in a process where `blur_bpda` is registered."""
    code = (
        "import sys\n"
        "from menet_jax import main, preprocess\n"
        "preprocess.register(preprocess.Method('blur_bpda', lambda a, m: a, matrices=False))\n"
        f"sys.argv = ['menet_jax.main', *{list(args)!r}]\n"
        "main.entry()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "run, args, message",
    [
        (
            _run_main,
            ["--config.me.method=median"],
            "error: config.me.method='median' is not allowed; it must be one of ",
        ),
        (
            _run_main_with_bpda_only_method,
            ["--config.me.method=blur_bpda", "--config.eval.gradient=exact"],
            "error: config.eval.gradient='exact' needs an exact gradient through ME, and "
            "config.me.method='blur_bpda' has none",
        ),
    ],
)
def test_a_method_the_config_cannot_run_is_one_line_and_exit_1(tmp_path, run, args, message):
    workdir = tmp_path / "w"
    r = run("--config=configs/mnist_demo.py", f"--workdir={workdir}", *args)
    assert (r.returncode, r.stdout) == (1, ""), r.stderr[-2000:]
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert not workdir.exists()  # before any work
