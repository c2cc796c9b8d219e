"""Tests for menet_jax.models: shapes, parameter counts, BatchNorm modes, normalisation, grads.

Parameter counts are checked against closed-form sums written out here (and against published
PyTorch figures). Forward numerics of LeNet and of the PyTorch-style padded convolution, and the
convolution's own gradients, are checked against float64 numpy references. The big registry
networks are shape-checked abstractly (`jax.eval_shape`); the behaviour tests (BatchNorm modes,
normalisation, jitted training steps) run on small variants of the same classes, to stay fast
on CPU.
"""

from __future__ import annotations

import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from menet_jax.models import (
    MODELS,
    DenseNet,
    LeNet,
    ResNet,
    WideResNet,
    create_model,
    layers,
)
from menet_jax.models.conv import Conv, conv2d

# ---------------------------------------------------------------------------------------------
# Closed-form parameter counts (weights + biases + BatchNorm scale/shift; no running stats).


def _conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def _bn(c: int) -> int:
    return 2 * c


def _fc(cin: int, cout: int) -> int:
    return cin * cout + cout


def resnet18_count(channels: int, classes: int) -> int:
    total = _conv(channels, 64, 3) + _bn(64)
    cin = 64
    for cout in (64, 64, 128, 128, 256, 256, 512, 512):
        total += _conv(cin, cout, 3) + _bn(cout) + _conv(cout, cout, 3) + _bn(cout)
        if cin != cout:
            total += _conv(cin, cout, 1) + _bn(cout)
        cin = cout
    return total + _fc(512, classes)


def wrn_count(depth: int, k: int, channels: int, classes: int) -> int:
    n = (depth - 4) // 6
    total = _conv(channels, 16, 3)
    cin = 16
    for cout in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += _bn(cin) + _conv(cin, cout, 3) + _bn(cout) + _conv(cout, cout, 3)
            if cin != cout:
                total += _conv(cin, cout, 1)
            cin = cout
    return total + _bn(cin) + _fc(cin, classes)


def densenet121_count(channels: int, classes: int, growth: int = 32) -> int:
    c = 2 * growth
    total = _conv(channels, c, 3)
    for i, n in enumerate((6, 12, 24, 16)):
        for _ in range(n):
            total += _bn(c) + _conv(c, 4 * growth, 1) + _bn(4 * growth)
            total += _conv(4 * growth, growth, 3)
            c += growth
        if i < 3:
            total += _bn(c) + _conv(c, c // 2, 1)
            c //= 2
    return total + _bn(c) + _fc(c, classes)


def lenet_count(h: int, w: int, channels: int, classes: int) -> int:
    flat = ((h + 3) // 4) * ((w + 3) // 4) * 64
    return (
        _conv(channels, 32, 5, bias=True)
        + _conv(32, 64, 5, bias=True)
        + _fc(flat, 1024)
        + _fc(1024, classes)
    )


def _num_params(model: nnx.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _abstract(name: str, **kwargs) -> nnx.Module:
    return nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), **kwargs))


def test_closed_forms_match_published_pytorch_figures():
    # kuangliu ResNet18 and torchvision's ImageNet DenseNet-121 (7x7 stem + BN, 1000 classes):
    # the latter differs from the CIFAR layout by the stem conv, its BN and the classifier.
    assert resnet18_count(3, 10) == 11_173_962
    tv = densenet121_count(3, 1000) - _conv(3, 64, 3) + _conv(3, 64, 7) + _bn(64)
    assert tv == 7_978_856
    assert lenet_count(28, 28, 1, 10) == 3_274_634


@pytest.mark.parametrize(
    "name, shape, classes, expected",
    [
        ("resnet18", (32, 32, 3), 10, 11_173_962),
        ("wrn28_10", (32, 32, 3), 10, 36_479_194),
        ("lenet", (28, 28, 1), 10, 3_274_634),
        ("densenet121", (64, 64, 3), 200, 7_151_048),
    ],
)
def test_parameter_count_pinned(name, shape, classes, expected):
    closed_form = {
        "resnet18": lambda: resnet18_count(shape[2], classes),
        "wrn28_10": lambda: wrn_count(28, 10, shape[2], classes),
        "lenet": lambda: lenet_count(*shape, classes),
        "densenet121": lambda: densenet121_count(shape[2], classes),
    }[name]()
    assert closed_form == expected
    model = _abstract(name, num_classes=classes, input_shape=shape)
    assert _num_params(model) == expected


@pytest.mark.parametrize(
    "name, shape, classes, expected",
    [
        ("resnet18", (20, 12, 1), 7, resnet18_count(1, 7)),
        ("lenet", (14, 10, 3), 4, lenet_count(14, 10, 3, 4)),
        ("wrn28_10", (16, 16, 1), 100, wrn_count(28, 10, 1, 100)),
    ],
)
def test_parameter_count_other_shapes(name, shape, classes, expected):
    model = _abstract(name, num_classes=classes, input_shape=shape)
    assert _num_params(model) == expected


def test_only_params_and_batch_stats():
    model = _abstract("resnet18", num_classes=10, input_shape=(32, 32, 3))
    state = nnx.state(model)
    rest = nnx.state(model, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat)))
    assert jax.tree.leaves(rest) == []
    # Running mean and var: two per BN channel; ResNet-18 has 4,800 BN channels.
    stats = nnx.state(model, nnx.BatchStat)
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(stats)) == 2 * 4_800
    assert len(jax.tree.leaves(state)) > 0


# ---------------------------------------------------------------------------------------------
# Output shapes and dtypes.


@pytest.mark.parametrize(
    "name, shape, classes",
    [
        ("resnet18", (32, 32, 3), 10),
        ("resnet18", (8, 8, 3), 100),
        ("wrn28_10", (32, 32, 3), 10),
        ("lenet", (28, 28, 1), 10),
        ("densenet121", (64, 64, 3), 200),
    ],
)
def test_output_shape_and_dtype(name, shape, classes):
    # Abstract evaluation traces the full network at its real size without running it.
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)

    def forward(x):
        model = create_model(name, num_classes=classes, input_shape=shape, rngs=nnx.Rngs(0))
        # Eval mode: tracing BatchNorm's running-stat updates costs jax time quadratic in depth.
        model.eval()
        return model(x)

    out = jax.eval_shape(forward, x)
    assert out.shape == (2, classes)
    assert out.dtype == jnp.float32


TINY = {
    "resnet": partial(ResNet, stage_sizes=(1, 1, 1, 1), widths=(4, 8, 8, 8)),
    "wrn": partial(WideResNet, depth=10, widen_factor=1),
    "densenet": partial(DenseNet, block_sizes=(2, 2), growth_rate=4),
    "lenet": LeNet,
}
SHAPE = (8, 8, 3)


@functools.cache
def _tiny_split(kind: str, seed: int, mean, std) -> tuple[nnx.GraphDef, nnx.State]:
    # Building runs one XLA compile per distinct parameter shape, slow on CPU, so each model is
    # built once and handed out as fresh copies.
    model = TINY[kind](num_classes=5, input_shape=SHAPE, mean=mean, std=std, rngs=nnx.Rngs(seed))
    return nnx.split(model)


def _tiny(kind: str, seed: int = 0, mean=None, std=None) -> nnx.Module:
    return nnx.merge(*_tiny_split(kind, seed, mean, std))


def _images(seed: int, batch: int = 2, shape=SHAPE) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, *shape), jnp.float32)


@nnx.jit
def _forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)


# ---------------------------------------------------------------------------------------------
# Numerics against float64 numpy references.


def _np_conv(x, w, b, *, stride, pad):
    x = np.pad(x, ((0, 0), pad, pad, (0, 0)))
    kh, kw = w.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * ho : stride, j : j + stride * wo : stride]
            out += patch @ w[i, j]
    return out if b is None else out + b


def _np_maxpool_same(x):
    # TF/XLA SAME for a 2x2 window with stride 2 pads only the bottom/right, by H % 2 / W % 2.
    h, w = x.shape[1:3]
    x = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-np.inf)
    b, hh, ww, c = x.shape
    return x.reshape(b, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))


def test_lenet_matches_numpy_reference():
    shape = (10, 6, 3)  # 10 -> 5 -> 3 and 6 -> 3 -> 2 exercise the rounding-up SAME pool
    mean, std = (0.3, 0.6, 0.5), (0.2, 0.5, 0.3)
    model = LeNet(num_classes=5, input_shape=shape, mean=mean, std=std, rngs=nnx.Rngs(3))
    x = _images(4, batch=3, shape=shape)
    got = np.asarray(model(x))

    p = jax.tree.map(lambda v: np.asarray(v, np.float64), nnx.to_pure_dict(nnx.state(model)))
    h = (np.asarray(x, np.float64) - np.array(mean)) / np.array(std)
    h = np.maximum(_np_conv(h, p["conv1"]["kernel"], p["conv1"]["bias"], stride=1, pad=(2, 2)), 0)
    h = _np_maxpool_same(h)
    h = np.maximum(_np_conv(h, p["conv2"]["kernel"], p["conv2"]["bias"], stride=1, pad=(2, 2)), 0)
    h = _np_maxpool_same(h).reshape(3, -1)
    h = np.maximum(h @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
    want = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _np_adjoint(linear, shape, g):
    """The VJP g -> J^T g of a float64 map linear in an array of `shape`, column by column."""
    basis = np.eye(int(np.prod(shape))).reshape(-1, *shape)
    return np.array([np.sum(g * linear(e)) for e in basis]).reshape(shape)


@pytest.mark.parametrize(
    "kernel, stride, size",
    [
        ((5, 5, 2, 3), 1, (6, 5)),
        ((3, 1, 2, 3), 1, (6, 5)),
        ((5, 5, 1, 4), 1, (6, 5)),  # one input channel: the matmul-and-shifted-sums gradient
        ((3, 5, 1, 2), 1, (6, 5)),
        ((3, 3, 2, 3), 2, (6, 7)),  # even and odd sizes: the last window reaches the end or not
        ((1, 1, 3, 2), 2, (7, 6)),
        ((3, 3, 1, 2), 2, (5, 5)),
        ((3, 3, 2, 3), 1, (3, 32)),  # 32 wide: the kernel gradient tap by tap on a CPU
        ((1, 1, 2, 3), 1, (2, 33)),
    ],
)
def test_conv2d_value_and_gradients_match_numpy(kernel, stride, size):
    # conv2d's own backward rule against the exact adjoints (VJPs) of a float64 numpy
    # convolution, eagerly, jitted and inside a loop (where XLA:CPU compiles it differently).
    rng = np.random.default_rng(11)
    x = rng.uniform(size=(2, *size, kernel[2])).astype(np.float32)
    w = rng.normal(size=kernel).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    conv_x = lambda xx: _np_conv_padded(xx, w64, stride)  # noqa: E731
    conv_w = lambda ww: _np_conv_padded(x64, ww, stride)  # noqa: E731
    g = rng.normal(size=conv_x(x64).shape)
    want_x, want_w = _np_adjoint(conv_x, x.shape, g), _np_adjoint(conv_w, w.shape, g)
    gf = jnp.asarray(g, jnp.float32)

    def grads(xx, ww):
        return jax.vjp(lambda a, b: conv2d(a, b, stride), xx, ww)[1](gf)

    def looped(xx, ww):
        return jax.lax.fori_loop(0, 1, lambda _, c: grads(xx, ww), grads(xx, ww))

    np.testing.assert_allclose(conv2d(x, w, stride), conv_x(x64), rtol=1e-5, atol=1e-5)
    for fn in (grads, jax.jit(grads), jax.jit(looped)):
        got_x, got_w = fn(jnp.asarray(x), jnp.asarray(w))
        np.testing.assert_allclose(np.asarray(got_x), want_x, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(got_w), want_w, rtol=1e-4, atol=1e-4)


def _np_conv_padded(x, w, stride):
    """Convolution at `stride` padded by kh // 2 rows and kw // 2 columns on each side."""
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += xp[:, i : i + stride * ho : stride, j : j + stride * wo : stride] @ w[i, j]
    return out


def test_conv_module_is_nnx_conv_with_pytorch_padding():
    # Same parameter names, shapes and initialisation as nnx.Conv; values as nnx.Conv's.
    ours = Conv(3, 4, 3, stride=2, rngs=nnx.Rngs(5))
    theirs = nnx.Conv(3, 4, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(5))
    assert isinstance(ours, nnx.Conv)
    mine, ref = (nnx.to_pure_dict(nnx.state(m)) for m in (ours, theirs))
    assert jax.tree.structure(mine) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = _images(9, shape=(7, 6, 3))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [6, 7])
def test_strided_conv_pads_like_pytorch(size):
    # PyTorch's padding=1 pads both sides; XLA's SAME would pad only bottom/right for even sizes.
    conv = layers.conv(2, 3, 3, stride=2, rngs=nnx.Rngs(0))
    x = _images(5, shape=(size, size, 2))
    kernel = np.asarray(conv.kernel[...], np.float64)
    want = _np_conv(np.asarray(x, np.float64), kernel, None, stride=2, pad=(1, 1))
    np.testing.assert_allclose(np.asarray(conv(x)), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# BatchNorm modes, determinism, normalisation.


def _batch_stats(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


@pytest.mark.parametrize("kind", ["resnet", "wrn", "densenet"])
def test_batchnorm_train_updates_stats_eval_does_not(kind):
    model = _tiny(kind)
    x = _images(2)
    before = _batch_stats(model)
    model.train()
    train_out = _forward(model, x)
    assert train_out.shape == (2, 5) and train_out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(train_out)))
    after_train = _batch_stats(model)
    moved = [bool(np.any(a != b)) for a, b in zip(before, after_train, strict=True)]
    assert all(moved), "every running statistic should move in train mode"

    model.eval()
    out1 = _forward(model, x)
    for a, b in zip(after_train, _batch_stats(model), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(out1), np.asarray(_forward(model, x)))
    assert not np.allclose(np.asarray(out1), np.asarray(train_out))
    # Eval mode uses running stats, so an example's logits do not depend on its batch-mates.
    x_other = jnp.concatenate([x[:1], _images(3)[1:]])
    np.testing.assert_allclose(
        np.asarray(_forward(model, x_other))[0], np.asarray(out1)[0], rtol=1e-5, atol=1e-5
    )


def test_batch_norm_uses_pytorch_momentum():
    # PyTorch's momentum 0.1: running <- 0.9 * running + 0.1 * batch statistic (biased variance).
    bn = layers.batch_norm(3, rngs=nnx.Rngs(0))
    x = _images(11, shape=(4, 4, 3))
    bn(x)
    xs = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.1 * xs.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(bn.var[...]), 0.9 + 0.1 * xs.var(axis=(0, 1, 2)), rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["resnet", "lenet"])
def test_normalisation_inside_model(kind):
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    plain = _tiny(kind, seed=7)
    normed = _tiny(kind, seed=8, mean=mean, std=std)
    nnx.update(normed, nnx.state(plain))
    plain.eval()
    normed.eval()
    x = _images(6)
    want = _forward(plain, (x - jnp.array(mean)) / jnp.array(std))
    np.testing.assert_allclose(
        np.asarray(_forward(normed, x)), np.asarray(want), rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(np.asarray(_forward(plain, x)), np.asarray(want))


# ---------------------------------------------------------------------------------------------
# Jit and gradients, as the training loop uses them.


@nnx.jit
def _train_step(model, optimizer, x, y):
    def loss_fn(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    leaves = jax.tree.leaves(grads)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))
    nonzero = jnp.all(jnp.stack([jnp.any(g != 0) for g in leaves]))
    return loss, finite, nonzero


@pytest.mark.parametrize("kind", sorted(TINY))
def test_jit_grad_and_learn_a_fixed_batch(kind):
    model = _tiny(kind)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    num_params = len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    x, y = _images(10, batch=4), jnp.arange(4)
    model.train()
    losses = []
    for _ in range(10):
        loss, finite, nonzero = _train_step(model, optimizer, x, y)
        assert bool(finite), "gradients must be finite"
        assert bool(nonzero), "every parameter must get a gradient"
        losses.append(float(loss))
    assert num_params == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------------------------
# Errors.


def test_registry_names():
    assert set(MODELS) == {"resnet18", "wrn28_10", "lenet", "densenet121"}


def test_unknown_name_raises():
    with pytest.raises(ValueError, match=r"'vgg16'.*densenet121.*lenet.*resnet18.*wrn28_10"):
        create_model("vgg16", num_classes=10, input_shape=(32, 32, 3), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("num_classes", [0, 1, -3, 2.5, True, "10"])
def test_bad_num_classes_raises(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("lenet", num_classes=num_classes, input_shape=(8, 8, 1), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "name, shape",
    [
        ("lenet", (28, 28)),
        ("lenet", (28, 28, 1, 1)),
        ("resnet18", (0, 32, 3)),
        ("resnet18", (32, 32, 3.0)),
        ("wrn28_10", 32),
        ("densenet121", (4, 64, 3)),  # three 2x2 pools need H, W >= 8
    ],
)
def test_bad_input_shape_raises(name, shape):
    with pytest.raises(ValueError, match="input_shape"):
        create_model(name, num_classes=10, input_shape=shape, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "mean, std",
    [((0.5,), None), (None, (0.5,)), ((0.5, 0.5), (0.2, 0.2)), ((0.5,), (0.0,))],
)
def test_bad_mean_std_raises(mean, std):
    with pytest.raises(ValueError, match="mean|std"):
        create_model(
            "lenet", num_classes=10, input_shape=(8, 8, 1), mean=mean, std=std, rngs=nnx.Rngs(0)
        )


def test_wrong_input_at_call_raises():
    model = _tiny("lenet")
    with pytest.raises(ValueError, match="shape"):
        model(jnp.zeros((2, 8, 8, 1)))
    model = _tiny("resnet")
    with pytest.raises(ValueError, match="shape"):
        model(jnp.zeros((2, 8, 8, 1)))


def test_bad_architecture_settings_raise():
    with pytest.raises(ValueError, match="depth"):
        WideResNet(depth=27, widen_factor=10, num_classes=10, input_shape=SHAPE, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="stage_sizes"):
        ResNet(stage_sizes=(2, 2), num_classes=10, input_shape=SHAPE, rngs=nnx.Rngs(0))
