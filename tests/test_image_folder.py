"""The image-folder dataset on small folders the tests write: PNG and JPEG, three classes, every
kind of bad folder (one line and exit 1 from the command line), and a tiny ResNet trained and
evaluated on such a folder."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from menet_jax import evaluation, image_folder, input_pipeline, train
from menet_jax.config import ConfigError, check_model_fits
from tests.test_evaluate import shrink_eval
from tests.test_train import ROOT, tiny_config

CLASSES = ("ant", "bee", "cat")  # labels 0, 1, 2 (sorted folder names)
# One colour per class; each image also carries its index in a corner pixel (exact in PNG).
COLOURS = {"ant": (220, 40, 40), "bee": (40, 200, 60), "cat": (50, 60, 230)}


def _write(path, array, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if array.ndim == 2 else "RGB"
    Image.fromarray(array, mode).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _image(cls, i, size=8):
    a = np.empty((size, size, 3), np.uint8)
    a[:] = COLOURS[cls]
    a[0, 0] = (i, i, i)
    return a


def make_folder(root, *, train_per_class=6, test_per_class=5, size=8):
    """PNG training images, JPEG test images (upper- and lower-case extensions), a README."""
    for cls in CLASSES:
        for i in range(train_per_class):
            _write(root / "train" / cls / f"{i:03d}.png", _image(cls, i, size), "PNG")
        for i in range(test_per_class):
            ext = ".JPG" if i % 2 else ".jpeg"
            _write(root / "test" / cls / f"{i:03d}{ext}", _image(cls, i, size), "JPEG")
        (root / "train" / cls / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MENET_CACHE", str(cache))
    return cache


def _listing(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)))
        for d, _, files in os.walk(root)
        for f in files
    )


def _class_of(images):
    """Each image's class from its colour (the mean away from the marked corner)."""
    centre = images[:, 2:, 2:, :].reshape(len(images), -1, 3).mean(axis=1)
    colours = np.array([COLOURS[c] for c in CLASSES], np.float64)
    dist = np.abs(centre[:, None, :] - colours[None]).max(-1)
    assert dist.min(axis=1).max() < 12  # every image is near one class colour
    return dist.argmin(axis=1)


def test_reads_labels_shape_and_pixels(tmp_path, cache_dir):
    root = make_folder(tmp_path / "photos")
    before = _listing(root)
    info = input_pipeline.get_info("image_folder", data_dir=str(root))
    assert (info.num_classes, info.image_shape) == (3, (8, 8, 3))
    train_x, train_y = input_pipeline.load_split("image_folder", "train", data_dir=str(root))
    test_x, test_y = input_pipeline.load_split("image_folder", "test", data_dir=str(root))
    assert train_x.shape == (18, 8, 8, 3) and train_x.dtype == np.uint8
    assert test_x.shape == (15, 8, 8, 3) and test_y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(train_y), [6, 6, 6])
    np.testing.assert_array_equal(np.bincount(test_y), [5, 5, 5])
    # Labels are the sorted class folders; each image's colour says which it is.
    np.testing.assert_array_equal(_class_of(train_x), train_y)
    np.testing.assert_array_equal(_class_of(test_x), test_y)
    # PNG is lossless: every training image is exactly the array written.
    for x, y in zip(train_x, train_y, strict=True):
        np.testing.assert_array_equal(x, _image(CLASSES[y], int(x[0, 0, 0])))
    # The per-channel mean and std are the training pixels' (numpy float64 over the arrays).
    ref = np.stack([_image(c, i) for c in CLASSES for i in range(6)]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(info.mean, ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(info.std, ref.std(axis=0), rtol=1e-12)
    # The data folder is untouched; the cache is under MENET_CACHE.
    assert _listing(root) == before
    assert any(p.name == "meta.json" for p in cache_dir.rglob("*"))


def test_test_order_mixes_classes_and_is_fixed(tmp_path):
    root = make_folder(tmp_path / "photos", train_per_class=2, test_per_class=40)
    _, y = input_pipeline.load_split("image_folder", "test", data_dir=str(root))
    assert sorted(y.tolist()) == sorted([0, 1, 2] * 40)
    for n in (12, 30, 60):  # every prefix holds every class, none more than 2x its share
        counts = np.bincount(y[:n], minlength=3)
        assert counts.min() > 0 and counts.max() <= 2 * n / 3, (n, counts)
    image_folder._MEMO.clear()
    _, again = input_pipeline.load_split("image_folder", "test", data_dir=str(root))
    np.testing.assert_array_equal(again, y)  # the same order from the cache


def test_second_load_reads_the_cache_and_a_changed_folder_is_read_again(
    tmp_path, monkeypatch, cache_dir
):
    root = make_folder(tmp_path / "photos")
    first = input_pipeline.load_split("image_folder", "train", data_dir=str(root))
    image_folder._MEMO.clear()

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache holds it")

    def no_rescan(root):
        raise AssertionError(f"listed {root} again although nothing in it changed")

    # Patched in a context of their own: monkeypatch.undo() would also undo the autouse fixture's
    # MENET_CACHE, and the load below would then write into the user's real cache.
    with monkeypatch.context() as patch:
        patch.setattr(image_folder, "_decode", no_decoding)
        patch.setattr(image_folder, "scan", no_rescan)
        second = input_pipeline.load_split("image_folder", "train", data_dir=str(root))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    _write(root / "train" / "ant" / "999.png", _image("ant", 99), "PNG")
    x, _ = input_pipeline.load_split("image_folder", "train", data_dir=str(root))
    assert len(x) == 19
    assert len(list((cache_dir / "image_folder").iterdir())) == 2  # both versions, cached here


def test_grayscale_folder(tmp_path):
    root = tmp_path / "gray"
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                _write(root / split / cls / f"{i}.png", np.full((6, 5), 40 * i, np.uint8), "PNG")
    info = input_pipeline.get_info("image_folder", data_dir=str(root))
    assert info.image_shape == (6, 5, 1) and info.num_classes == 2


def _bad(tmp_path, case):
    """A folder with one thing wrong, and a fragment of the message it must give."""
    root = make_folder(tmp_path / case)
    if case == "no_train":
        os.rename(root / "train", root / "training")
        return root, "has no 'train' folder"
    if case == "no_test":
        os.rename(root / "test", root / "val")
        return root, "has no 'test' folder"
    if case == "empty_class":
        for f in (root / "test" / "bee").iterdir():
            f.unlink()
        (root / "test" / "bee" / "README").write_text("")
        return root, f"class folder {root}/test/bee holds no .png/.jpg/.jpeg image"
    if case == "mixed_sizes":
        _write(root / "train" / "cat" / "big.png", _image("cat", 0, size=10), "PNG")
        return root, "big.png is 10x10 colour but"
    if case == "mixed_channels":
        _write(root / "train" / "bee" / "gray.png", np.zeros((8, 8), np.uint8), "PNG")
        return root, "gray.png is 8x8 grayscale but"
    if case == "unreadable":
        (root / "train" / "ant" / "broken.jpg").write_bytes(b"not a jpeg at all")
        return root, f"cannot read image {root}/train/ant/broken.jpg"
    if case == "class_missing_from_test":
        for f in (root / "test" / "cat").iterdir():
            f.unlink()
        (root / "test" / "cat").rmdir()
        return root, "class 'cat' of image folder"
    raise ValueError(case)


BAD_CASES = [
    "no_train", "no_test", "empty_class", "mixed_sizes", "mixed_channels", "unreadable",
    "class_missing_from_test",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_folder_raises_one_sentence(tmp_path, case):
    root, fragment = _bad(tmp_path, case)
    before = _listing(root)
    with pytest.raises(image_folder.ImageFolderError) as info:
        input_pipeline.load_split("image_folder", "train", data_dir=str(root))
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert _listing(root) == before  # nothing written into the data folder


def _main(*args, env_cache):
    env = {**os.environ, "MENET_CACHE": str(env_cache)}
    return subprocess.run(
        [sys.executable, "-m", "menet_jax.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_line_bad_folders_and_unfit_model_end_in_one_line(tmp_path, cache_dir):
    """Every bad folder, a missing data_dir and a model too small for the images: one line on
    stderr and exit 1 from `python -m menet_jax.main`, before any training (no checkpoint)."""
    cases = [(*_bad(tmp_path, c), "configs/cifar10.py:cpu") for c in BAD_CASES]
    big = tmp_path / "big"
    make_folder(big, size=40, train_per_class=2, test_per_class=2)
    cases.append(
        (big, "lenet takes images of at most 32x32, these are 40x40", "configs/mnist_demo.py")
    )
    cases.append((None, "needs config.data_dir", "configs/cifar10.py:cpu"))
    for i, (root, fragment, config) in enumerate(cases):
        workdir = tmp_path / f"run{i}"
        args = [f"--config={config}", "--config.dataset=image_folder", f"--workdir={workdir}"]
        args.append("--config.progress_bar=False")
        if root is not None:
            args.append(f"--config.data_dir={root}")
        result = _main(*args, "--mode=train", env_cache=cache_dir)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (fragment, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
        assert not (workdir / "checkpoints").exists()


def test_model_fit_check_accepts_what_fits(tmp_path):
    root = make_folder(tmp_path / "photos")
    c = tiny_config(dataset="image_folder", data_dir=str(root), model="resnet18")
    check_model_fits(c)
    c.model = "lenet"
    check_model_fits(c)  # 8x8 is within the MNIST CNN's 32x32
    c.model_mean, c.model_std = (0.5,), (0.5,)
    with pytest.raises(ConfigError, match="one value per channel"):
        check_model_fits(c)


def test_tiny_resnet_trains_and_evaluates_on_a_folder(tmp_path):
    root = make_folder(tmp_path / "photos", train_per_class=12, test_per_class=6, size=16)
    c = tiny_config(
        dataset="image_folder",
        data_dir=str(root),
        model="resnet18",
        model_width=4,
        augment=True,
        num_train_examples=None,
        num_eval_examples=None,
        batch_size=12,
        num_train_steps=4,
        lr_schedule="warmup_cosine",
        **{"me.mode": "online", "eval.eps": 8 / 255, "eval.step_size": 2 / 255},
    )
    c = shrink_eval(c, 6)
    c.eval.attacks = "pgd,eot"
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(c, workdir)
    assert summary["steps"] == 4 and 0 <= summary["clean_accuracy"] <= 1
    assert summary["num_eval_examples"] == 18
    report = evaluation.evaluate(c, workdir)
    headline = report["headline"]
    assert headline["n"] == 6 and 0 <= headline["accuracy"] <= 1


def test_gpu_check_subset_copies_the_first_files_of_each_class(tmp_path):
    """`launch/gpu_check.sh --subset` keeps the layout and takes each class's first files."""
    src = make_folder(tmp_path / "full", train_per_class=3, test_per_class=2)
    dst = tmp_path / "subset"
    script = os.path.join(ROOT, "launch", "gpu_check.sh")
    result = subprocess.run(
        ["bash", script, "--subset", str(src), str(dst)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for split, n in (("train", 3), ("test", 2)):
        for cls in CLASSES:
            names = sorted(p.name for p in (dst / split / cls).iterdir())
            assert len(names) == n and all(image_folder._is_image(x) for x in names)
    x, y = input_pipeline.load_split("image_folder", "train", data_dir=str(dst))
    np.testing.assert_array_equal(np.bincount(y), [3, 3, 3])
