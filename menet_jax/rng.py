"""Every random stream of a run, derived from `jax.random.key(config.seed)`.

Training example (image i, copy k) of S' is masked with fold_in(fold_in(key(seed), i), k)
(`example_keys`). Image indices i are below 2**31 - 16, so the other streams fold in the ids
below, which no dataset reaches. Per-step draws fold the step into a stream's key (`step_key`), so
a resumed run repeats an uninterrupted one. Changing any id changes what a run draws.
"""

from __future__ import annotations

import zlib

import jax

AUGMENT = 2**31 - 1  # crops and flips of the train step, per step
ADVERSARIAL = 2**31 - 2  # adversarial training's PGD start and masks, per step
INIT = 2**31 - 3  # parameter initialisation
CLEAN_EVAL = 2**31 - 4  # masks of the clean evaluation after training, per batch
ATTACK = 2**31 - 5  # the evaluation's attacks: per row (`named`), then per batch
JUDGE = 2**31 - 6  # the evaluation's judging draws r = 0..R-1
SANITY = 2**31 - 7  # the evaluation's sanity measurements (zero-gradient check), per batch
CROSSCHECK = 2**31 - 8  # the independent attack of `evaluation.crosscheck`, per variant and batch

# Sub-stream of a batch's attack key for the one mask that a fixed-mask attack row attacks and
# judges with, and that network-only attacks reconstruct with.
FIXED_MASK = 2**20

# Sub-stream of the judging root (JUDGE) for the draws r = 0..max(N)-1 of the N-evaluation
# (docs/method.md §6.8): the 2R judging draws fold in r < 2R, far below it, never the same key.
ALL_DRAWS = 2**30


def stream(seed: int, stream_id: int) -> jax.Array:
    """The root key of one stream: fold_in(key(seed), stream_id)."""
    return jax.random.fold_in(jax.random.key(seed), stream_id)


def step_key(seed: int, stream_id: int, step) -> jax.Array:
    """The key of `step` in a per-step stream (step may be traced)."""
    return jax.random.fold_in(stream(seed, stream_id), step)


def example_keys(seed: int, image_idx: jax.Array, copy_idx: jax.Array) -> jax.Array:
    """The mask key of each (image i, copy k): fold_in(fold_in(key(seed), i), k), [B]."""
    return per_example(jax.random.key(seed), image_idx, copy_idx)


def per_example(root: jax.Array, image_idx: jax.Array, copy_idx: jax.Array) -> jax.Array:
    """One key per example (image i, copy k) of a batch: fold_in(fold_in(root, i), k), [B]."""
    return jax.vmap(lambda i, k: jax.random.fold_in(jax.random.fold_in(root, i), k))(
        image_idx, copy_idx
    )


def named(key: jax.Array, name: str) -> jax.Array:
    """A sub-stream of `key` for a named item (an evaluation row), stable across runs."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def fixed_mask_key(key: jax.Array) -> jax.Array:
    """The key of the one fixed mask drawn from a batch's attack key."""
    return jax.random.fold_in(key, FIXED_MASK)
