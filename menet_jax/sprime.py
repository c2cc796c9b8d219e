"""S': the masked-and-reconstructed training set of Algorithm 1 (docs/method.md §3.2).

Example e of an epoch stands for copy k = e % n of training image i = e // n, masked with the key
`rng.example_keys(seed, i, k)` at p = schedule[k] and reconstructed by the configured method,
then rounded to the uint8 grid (the authors store S' as uint8). `preprocess.Preprocessor.examples`
computes entries on the device (the online train step calls it inside jit, per device); `build`
computes all n*M of them once and caches them in WORKDIR/sprime/ as a memory-mapped .npy,
resumable chunk by chunk; on SIGTERM (`menet_jax.preemption`, one process) it stops after the
current chunk.

The cache file is named by a fingerprint of everything its content depends on (dataset, number of
training images, seed, the ME settings and the cache format), so a cache made under other settings
or by an older format is never reused: a new one is built beside it.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from menet_jax import input_pipeline, monitor, paths, preemption, preprocess, recipe

FORMAT = 2  # bump when the meaning of a cached entry changes
# `me` keys that do not change what S' holds.
_NOT_IN_FINGERPRINT = ("mode", "votes", "inference_p", "sprime_dir")


quantize = preprocess.quantize  # the uint8 grid S' is stored on


def fingerprint(config: ml_collections.ConfigDict, num_train: int) -> str:
    """A short hash of everything the cached S' of this run depends on."""
    me_keys = {k: v for k, v in config.me.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
    keys = {
        "format": FORMAT,
        "dataset": config.dataset,
        "num_train": num_train,
        "seed": config.seed,
        "me": me_keys,
    }
    return hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def folder(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The local folder of the cached S': config.me.sprime_dir if set, else WORKDIR/sprime for a
    local workdir, else $MENET_CACHE/sprime (default ~/.cache/menet_jax/sprime) for a remote one
    (a memory map cannot live in a bucket; the file name's fingerprint keeps runs apart)."""
    chosen = config.me.get("sprime_dir")  # absent from config.json files written before the key
    if chosen:
        return os.path.expanduser(chosen)
    if not paths.is_remote(workdir):
        return os.path.join(workdir, "sprime")
    cache = os.environ.get("MENET_CACHE") or os.path.join("~", ".cache", "menet_jax")
    return os.path.join(os.path.expanduser(cache), "sprime")


def build(config: ml_collections.ConfigDict, train_images: np.ndarray, workdir: str) -> np.ndarray:
    """Builds (or reuses, or finishes) the cached S' [n*M,H,W,C] uint8 in `folder(config, workdir)`.

    The build is written chunk by chunk into a memory-mapped file with a progress record, so a
    build that was killed goes on where it stopped. In a run of many processes, process 0 alone
    writes the folder's file while the others wait; a process that cannot see process 0's files
    (its folder is on a disk of its own host) builds its own copy there (`_build_many`).

    Args:
      config: the run's config.
      train_images: uint8 [M,H,W,C], the training images.
      workdir: the run's workdir.

    Returns:
      S' as a read-only memory map.
    """
    n, num_train = recipe.num_copies(config), len(train_images)
    shape = (n * num_train, *train_images.shape[1:])
    directory = folder(config, workdir)
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"sprime-{fingerprint(config, num_train)}.npy")
    if jax.process_count() == 1:
        return _build_file(config, train_images, final, shape)
    return _build_many(config, train_images, final, shape)


# How long the other processes wait for process 0's S' (the build of a large S' takes hours).
BUILD_WAIT_S = 7 * 24 * 3600


def _build_many(config, train_images: np.ndarray, final: str, shape: tuple) -> np.ndarray:
    """S' in a run of many processes: one writer per file, every process at the same barriers.

    Process 0 writes a marker named by a fresh nonce it shares; a process that sees the marker
    shares process 0's folder and waits for its file, one that does not builds its own (under a
    partial name of its own, renamed atomically, so two such processes on one host never write
    one file). Every process meets the same two barriers whatever it found.
    """
    import uuid

    from menet_jax import cluster

    me_index = jax.process_index()
    nonce = cluster.share("sprime-nonce", uuid.uuid4().hex)
    marker = os.path.join(os.path.dirname(final), f".shared-{nonce}")
    if me_index == 0:
        with open(marker, "w") as f:
            f.write("S' is written by process 0\n")
    cluster.barrier("sprime-probe")
    shares_folder = os.path.exists(marker)
    if me_index == 0 or not shares_folder:
        _build_file(config, train_images, final, shape, writer=me_index)
    cluster.barrier("sprime-built", timeout_s=BUILD_WAIT_S)
    if me_index == 0:
        os.remove(marker)
    arr = np.load(final, mmap_mode="r")
    if arr.shape != shape:
        raise ValueError(f"{final} holds S' of shape {arr.shape}, not {shape}; delete it")
    return arr


def _build_file(
    config, train_images: np.ndarray, final: str, shape: tuple, *, writer: int = 0
) -> np.ndarray:
    """Builds S' into `final` (resuming its partial file), or reuses a finished one."""
    n = recipe.num_copies(config)
    if os.path.exists(final):
        arr = np.load(final, mmap_mode="r")
        if arr.shape == shape:
            return arr
    suffix = "" if writer == 0 else f"-p{writer}"  # one partial file per writer
    partial, progress = final + ".partial" + suffix, final + ".progress" + suffix
    done = 0
    if os.path.exists(partial) and os.path.exists(progress):
        with open(progress) as f:
            done = int(json.load(f)["done"])
        out = np.lib.format.open_memmap(partial, mode="r+")
    else:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)

    pre = preprocess.from_config(config.me)

    @jax.jit
    def build_chunk(images_u8, image_idx, copy_idx):
        x = input_pipeline.to_float(images_u8)
        rec = pre.examples(config.seed, x, image_idx, copy_idx)
        return jnp.round(rec * 255.0).astype(jnp.uint8)

    chunk = int(config.me.build_batch_size)
    total = shape[0]
    bar = monitor.progress(total=total, initial=done, desc="building S'", unit="img", config=config)
    while done < total:
        e = np.arange(done, min(done + chunk, total))
        e_pad = input_pipeline.pad_batch(e, chunk)
        i, k = e_pad // n, e_pad % n
        rec = np.asarray(build_chunk(train_images[i], i, k))
        out[done : done + len(e)] = rec[: len(e)]
        done += len(e)
        out.flush()
        with open(progress, "w") as f:
            json.dump({"done": done}, f)
        bar.update(len(e))
        # One process only: with several, the processes need not build the same chunks.
        if done < total and jax.process_count() == 1 and preemption.requested(done // chunk):
            bar.close()
            raise preemption.Preempted(
                f"preempted during the S' build after {done} of {total} entries; progress "
                "saved; run the same command to resume"
            )
    bar.close()
    del out
    os.replace(partial, final)
    os.remove(progress)
    return np.load(final, mmap_mode="r")
