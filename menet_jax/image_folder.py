"""A dataset read from a folder of images: `ROOT/{train,test}/<class>/*.{png,jpg,jpeg}`.

The layout torchvision's and tfds' `ImageFolder` read. Labels are the positions of the class
folders in sorted order; the image shape, channel count and class count come from the files;
the per-channel mean and standard deviation the network normalises with are measured on the
training images. Both splits are decoded once, in parallel, and cached as `.npy` under
`$MENET_CACHE/image_folder/<key>/` (default `~/.cache/menet_jax`), keyed by the folder's path and
its listing (names, sizes, modification times): nothing is ever written into the data folder,
which may be read-only or in a bucket (`gs://`, through `menet_jax.paths`).

Each split is stored in a fixed pseudo-random order (sorted by class and file name, then a
permutation drawn from a constant seed), so any prefix of it, such as the evaluation's first 500
test images, mixes the classes.

A folder that cannot be a dataset ends in one `ImageFolderError` sentence naming what is wrong:
no `train` or `test` folder, a split with no class folders, an empty class, a class in one split
only, an unreadable file, or images of different sizes or channel counts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os

import numpy as np
import tqdm

from menet_jax import paths

SPLITS = ("train", "test")
EXTENSIONS = (".png", ".jpg", ".jpeg")
_ORDER_SEED = 20190609  # the permutation that mixes the classes; part of the cache's key
_CACHE_VERSION = 1


class ImageFolderError(ValueError):
    """The folder is not a usable image-folder dataset (the message says why, in one sentence)."""


@dataclasses.dataclass(frozen=True)
class FolderInfo:
    """What the files of an image folder say about the dataset.

    Attributes:
      root: The folder, as given.
      classes: Class names (sorted folder names); label i is `classes[i]`.
      image_shape: `(H, W, C)` shared by every image (C is 1 for grayscale, 3 for colour).
      mean: Per-channel mean of the training images in [0, 1] units.
      std: Per-channel standard deviation of the training images in [0, 1] units.
      sizes: Number of images per split, e.g. `{"train": 50000, "test": 8000}`.
    """

    root: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sizes: dict[str, int]


def _cache_root() -> str:
    return os.path.join(
        os.path.expanduser(os.environ.get("MENET_CACHE", "~/.cache/menet_jax")), "image_folder"
    )


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS) and not name.startswith(".")


def _list_local(folder: str) -> list[tuple[str, int, int]]:
    """(path relative to `folder`, size, mtime_ns) of every image file below `folder`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if _is_image(name):
                full = os.path.join(dirpath, name)
                st = os.stat(full)
                out.append((os.path.relpath(full, folder), st.st_size, st.st_mtime_ns))
    return out


def _list_remote(folder: str) -> list[tuple[str, int, int]]:
    base = paths.path(folder)
    return sorted((str(p.relative_to(base)), 0, 0) for p in base.rglob("*") if _is_image(p.name))


def _subfolders(folder: str) -> list[str]:
    p = paths.path(folder)
    return sorted(c.name for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))


def scan(root: str) -> tuple[list[str], dict[str, list[tuple[str, int, str]]]]:
    """The class names and each split's images as (path, label, signature), sorted.

    The signature (relative name, size, modification time) keys the cache.

    Raises:
      ImageFolderError: a missing split, a split without class folders, an empty class, or a
        class present in one split only.
    """
    if not paths.isdir(root):
        raise ImageFolderError(
            f"image folder {root} does not exist or is not a folder; it must hold "
            "train/<class>/ and test/<class>/ folders of .png/.jpg/.jpeg images"
        )
    classes: dict[str, list[str]] = {}
    for split in SPLITS:
        folder = paths.join(root, split)
        if not paths.isdir(folder):
            raise ImageFolderError(
                f"image folder {root} has no {split!r} folder; it must hold train/<class>/ and "
                "test/<class>/ folders of .png/.jpg/.jpeg images"
            )
        classes[split] = _subfolders(folder)
        if not classes[split]:
            raise ImageFolderError(
                f"{folder} has no class folders; put each class's images in {folder}/<class>/"
            )
    for a, b in (("train", "test"), ("test", "train")):
        missing = sorted(set(classes[a]) - set(classes[b]))
        if missing:
            raise ImageFolderError(
                f"class {missing[0]!r} of image folder {root} has a {a} folder but no {b} "
                f"folder ({paths.join(root, b, missing[0])} is missing); both splits need the "
                "same classes"
            )
    names = classes["train"]
    out = {}
    for split in SPLITS:
        entries = []
        for label, name in enumerate(names):
            folder = paths.join(root, split, name)
            lister = _list_remote if paths.is_remote(folder) else _list_local
            files = lister(folder)
            if not files:
                raise ImageFolderError(
                    f"class folder {folder} holds no .png/.jpg/.jpeg image; every class needs "
                    "images in both splits"
                )
            entries += [(paths.join(folder, rel), label, f"{rel}:{size}:{mtime}")
                        for rel, size, mtime in files]  # fmt: skip
        out[split] = entries
    return names, out


def _decode(path: str) -> np.ndarray:
    """uint8 [H, W, C] with C = 1 (grayscale) or 3 (colour; alpha and palettes to RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with paths.path(path).open("rb") as f, Image.open(f) as image:
            image.load()
            gray = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            array = np.asarray(image.convert("L" if gray else "RGB"), np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ImageFolderError(f"cannot read image {path} ({' '.join(str(e).split())})") from None
    return array[..., None] if array.ndim == 2 else array


def _order(n: int, split: str) -> np.ndarray:
    """The fixed permutation of a split that mixes its classes."""
    return np.random.default_rng((_ORDER_SEED, SPLITS.index(split))).permutation(n)


def _decode_split(entries, split: str, root: str, *, progress: bool):
    files = [e[0] for e in entries]
    images = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = pool.map(_decode, files, chunksize=64)  # PIL releases the GIL while decoding
        bar = tqdm.tqdm(
            decoded, total=len(files), desc=f"decoding {root} [{split}]", disable=not progress
        )
        for i, image in enumerate(bar):
            if images is None:
                images = np.empty((len(files), *image.shape), np.uint8)
                first = files[i]
            if image.shape != images.shape[1:]:
                raise ImageFolderError(
                    f"image {files[i]} is {_shape_words(image.shape)} but {first} is "
                    f"{_shape_words(images.shape[1:])}; every image of an image folder must have "
                    "the same size and channel count"
                )
            images[i] = image
    labels = np.asarray([e[1] for e in entries], np.int32)
    order = _order(len(files), split)
    return images[order], labels[order]


def _shape_words(shape) -> str:
    h, w, c = shape
    return f"{h}x{w} {'grayscale' if c == 1 else 'colour'}"


def _cache_dir(root: str, listing: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([_CACHE_VERSION, _ORDER_SEED, paths.abspath(root)]).encode())
    for split in SPLITS:
        for _, label, signature in listing[split]:
            digest.update(f"{split}\0{label}\0{signature}\n".encode())
    name = paths.basename(root) or "root"
    return os.path.join(_cache_root(), f"{name}-{digest.hexdigest()[:16]}")


def _load_cached(cache: str):
    meta_path = os.path.join(cache, "meta.json")
    if not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        arrays = {
            split: (
                np.load(os.path.join(cache, f"{split}_images.npy"), mmap_mode="r"),
                np.load(os.path.join(cache, f"{split}_labels.npy")),
            )
            for split in SPLITS
        }
    except (OSError, ValueError):
        return None  # a damaged cache is rebuilt
    return meta, arrays


def _save(cache: str, meta: dict, arrays: dict) -> None:
    try:
        os.makedirs(cache, exist_ok=True)
        for split, (images, labels) in arrays.items():
            for kind, array in (("images", images), ("labels", labels)):
                path = os.path.join(cache, f"{split}_{kind}.npy")
                tmp = f"{path}.tmp{os.getpid()}"
                with open(tmp, "wb") as f:
                    np.save(f, array)
                os.replace(tmp, path)
        tmp = os.path.join(cache, f"meta.json.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=2)
        os.replace(tmp, os.path.join(cache, "meta.json"))  # written last: marks the cache whole
    except OSError as e:
        print(f"image_folder: not caching {cache} ({e}); the next load decodes again.")


_MEMO: dict[str, tuple[dict, dict]] = {}
_SCANS: dict[str, tuple[tuple, tuple]] = {}


def _stamp(root: str) -> tuple | None:
    """Modification times of a local folder, its splits and their class folders (adding,
    removing or renaming an image changes one of them); None for a bucket."""
    if paths.is_remote(root):
        return None
    try:
        folders = [root] + [os.path.join(root, s) for s in SPLITS]
        folders += [e.path for f in folders[1:] for e in os.scandir(f) if e.is_dir()]
        return tuple(sorted((f, os.stat(f).st_mtime_ns) for f in folders))
    except OSError:
        return None  # scan() names what is wrong


def _scan_once(root: str) -> tuple:
    """`scan(root)`, read again only when the folder's `_stamp` moved (a run loads a split
    several times; a full listing of CIFAR-10's 58,000 files takes seconds)."""
    stamp = _stamp(root)
    if stamp is not None and _SCANS.get(root, (None,))[0] == stamp:
        return _SCANS[root][1]
    result = scan(root)
    if stamp is not None:
        _SCANS[root] = (stamp, result)
    return result


def _load(root: str, *, progress: bool = True) -> tuple[dict, dict]:
    """(meta, {split: (images, labels)}) of the folder, decoding it on first use."""
    classes, listing = _scan_once(root)  # a changed folder is a new cache
    cache = _cache_dir(root, listing)
    if cache in _MEMO:
        return _MEMO[cache]
    loaded = _load_cached(cache)
    if loaded is None:
        arrays = {s: _decode_split(listing[s], s, root, progress=progress) for s in SPLITS}
        shapes = {s: arrays[s][0].shape[1:] for s in SPLITS}
        if shapes["train"] != shapes["test"]:
            raise ImageFolderError(
                f"the train images of {root} are {_shape_words(shapes['train'])} but its test "
                f"images are {_shape_words(shapes['test'])}; both splits must match"
            )
        train = arrays["train"][0].reshape(-1, shapes["train"][2]).astype(np.float64) / 255.0
        meta = {
            "root": root,
            "classes": classes,
            "image_shape": list(shapes["train"]),
            "mean": train.mean(axis=0).tolist(),
            "std": train.std(axis=0).tolist(),
            "sizes": {s: len(arrays[s][1]) for s in SPLITS},
        }
        _save(cache, meta, arrays)
        loaded = (meta, arrays)
    _MEMO[cache] = loaded
    return loaded


def info(root: str, *, progress: bool = True) -> FolderInfo:
    """The classes, image shape and normalisation constants of the folder (decoding it once)."""
    meta, _ = _load(root, progress=progress)
    return FolderInfo(
        root=root,
        classes=tuple(meta["classes"]),
        image_shape=tuple(meta["image_shape"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        sizes=dict(meta["sizes"]),
    )


def load(root: str, split: str, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`(images, labels)` of one split: uint8 [N, H, W, C] and int32 [N], classes mixed."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; allowed: {', '.join(SPLITS)}.")
    _, arrays = _load(root, progress=progress)
    images, labels = arrays[split]
    return np.asarray(images), labels
