"""Every file under a workdir, a data dir or the tiny-imagenet folder, local or in a bucket.

Paths stay strings (`"runs/demo"`, `"gs://bucket/run"`); this module opens them through etils
`epath`, the path layer Orbax uses. A local path behaves as with `open` / `os`; a `gs://` path goes
to Google Cloud Storage through fsspec's `gcsfs` (epath picks TensorFlow's gfile instead when
TensorFlow is installed; TPU VMs and Colab TPU runtimes have no TensorFlow, so `gcsfs` is a
dependency). `pathlib.Path` and `os.path.abspath` must never see a remote path: the first turns
`gs://b/x` into `gs:/b/x`, the second prefixes the current directory.

Writes are whole-file and atomic: a local file is written to `NAME.tmp` and renamed; an object in
a bucket is one upload, which GCS makes visible all at once. A bucket cannot append, so files
that grow (metrics.jsonl, TensorBoard events) are rewritten whole by `menet_jax.monitor`.
"""

from __future__ import annotations

import io
import os
import posixpath

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def is_remote(p: PathLike) -> bool:
    """True for a URL path such as `gs://bucket/run` (anything with a `scheme://`)."""
    return "://" in os.fspath(p)


def path(p: PathLike) -> epath.Path:
    """`p` as an `epath.Path` (local, or remote through its scheme's backend)."""
    return epath.Path(os.fspath(p))


def join(p: PathLike, *parts: str) -> str:
    """`os.path.join`, with `/` for a remote path whatever the local OS."""
    return (posixpath if is_remote(p) else os.path).join(os.fspath(p), *parts)


def abspath(p: PathLike) -> str:
    """The absolute form of a local path; a remote path is already absolute."""
    return os.fspath(p) if is_remote(p) else os.path.abspath(p)


def basename(p: PathLike) -> str:
    """The last component of a local or remote path."""
    return posixpath.basename(os.fspath(p).rstrip("/"))


def exists(p: PathLike) -> bool:
    """True if the file or folder (a remote prefix with objects under it) exists."""
    return os.path.exists(p) if not is_remote(p) else path(p).exists()


def isdir(p: PathLike) -> bool:
    """True for a folder (a remote prefix with objects under it)."""
    return os.path.isdir(p) if not is_remote(p) else path(p).is_dir()


def makedirs(p: PathLike) -> None:
    """Creates the folder and its parents if missing (a remote prefix needs none)."""
    if is_remote(p):
        return  # a bucket has no folders: an object's name creates its prefixes
    os.makedirs(p, exist_ok=True)


def rmtree(p: PathLike) -> None:
    """Deletes a folder and everything under it, if it exists."""
    if exists(p):
        path(p).rmtree()


def read_bytes(p: PathLike) -> bytes:
    """The file's content."""
    return path(p).read_bytes()


def read_text(p: PathLike) -> str:
    """The file's content as UTF-8 text."""
    return path(p).read_text(encoding="utf-8")


def write_bytes(p: PathLike, data: bytes) -> None:
    """Writes the whole file atomically: a reader sees the old content or the new, never a part."""
    if is_remote(p):
        path(p).write_bytes(data)  # one upload: GCS shows the object whole or not at all
        return
    tmp = os.fspath(p) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, p)


def write_text(p: PathLike, text: str) -> None:
    """Writes UTF-8 text atomically (see `write_bytes`)."""
    write_bytes(p, text.encode("utf-8"))


def copy(src: PathLike, dst: PathLike) -> None:
    """Copies one file (either side local or remote), atomically at the destination."""
    write_bytes(dst, read_bytes(src))


def save_npz(p: PathLike, *, compressed: bool = False, **arrays) -> None:
    """`np.savez` (or `savez_compressed`) of `arrays` to `p`, atomically."""
    save = np.savez_compressed if compressed else np.savez
    if is_remote(p):
        buf = io.BytesIO()
        save(buf, **arrays)
        write_bytes(p, buf.getvalue())
        return
    tmp = os.fspath(p) + ".tmp"
    with open(tmp, "wb") as f:  # a file object, so np.savez adds no .npz suffix to the name
        save(f, **arrays)
    os.replace(tmp, p)


def load_npz(p: PathLike, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read eagerly."""
    source = io.BytesIO(read_bytes(p)) if is_remote(p) else p
    with np.load(source, allow_pickle=allow_pickle) as z:
        return {k: z[k] for k in z.files}


def load_npy(p: PathLike) -> np.ndarray:
    """The array of an .npy file."""
    return np.load(io.BytesIO(read_bytes(p)) if is_remote(p) else p, allow_pickle=False)


def savefig(fig, p: PathLike, **kwargs) -> None:
    """`fig.savefig` to a local or remote path (PNG unless `format` says otherwise)."""
    if not is_remote(p):
        fig.savefig(p, **kwargs)
        return
    buf = io.BytesIO()
    fig.savefig(buf, format=kwargs.pop("format", "png"), **kwargs)
    write_bytes(p, buf.getvalue())
