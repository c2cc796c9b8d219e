"""ME-Net training (Algorithm 1): S' building, the data-parallel train step, the loop.

One epoch is one pass over S' as Algorithm 1 builds it: example e of the epoch stands for copy
k = e % n of training image i = e // n, masked with the key fold_in(fold_in(key(seed), i), k) at
p = schedule[k]. `me.mode="offline"` reconstructs all n*M examples once (cached in the workdir);
`me.mode="online"` reconstructs them inside the jitted step with the same keys, so it trains on the
same S' without storing it. `me.method="none"` is the vanilla baseline (n = 1, no ME).

The step is one `jax.jit` over a 1-D device mesh ('data'): the batch is sharded over every device
of every process, the model and optimizer state are replicated. All randomness derives from
(seed, step) or (seed, example), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from menet_jax import checkpoint, defense, input_pipeline, me, models
from menet_jax import reporting as mlog
from menet_jax.validation import ConfigError, validate_config

# Independent random streams derived from key(seed). Example keys use fold_in(key(seed), i) for
# image indices i, so the other streams take indices no dataset reaches.
STREAM_AUG = 2**31 - 1
STREAM_ADV = 2**31 - 2
STREAM_INIT = 2**31 - 3
STREAM_EVAL = 2**31 - 4


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf."""


@dataclasses.dataclass
class Data:
    info: input_pipeline.DatasetInfo
    train_images: np.ndarray  # uint8 [M,H,W,C]
    train_labels: np.ndarray  # int32 [M]
    test_images: np.ndarray
    test_labels: np.ndarray


def load_data(config: ml_collections.ConfigDict) -> Data:
    """Loads the train and test splits of `config.dataset` as uint8 numpy arrays."""
    data_dir = config.data_dir or None
    info = input_pipeline.get_info(config.dataset)
    train = input_pipeline.load_split(config.dataset, "train", data_dir=data_dir)
    test = input_pipeline.load_split(config.dataset, "test", data_dir=data_dir)
    if config.num_train_examples > 0:
        train = tuple(a[: config.num_train_examples] for a in train)
    return Data(info, *train, *test)


def num_copies(config: ml_collections.ConfigDict) -> int:
    """n: masked copies per training image (1 for the vanilla baseline)."""
    return 1 if config.me.method == "none" else int(config.me.num_masks)


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
    return (num_train * num_copies(config)) // config.batch_size


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(round(config.num_epochs * steps_per_epoch(config, num_train)))


def create_model(config: ml_collections.ConfigDict, info, *, seed: int | None = None):
    """The configured network, initialised from the run's seed."""
    seed = config.seed if seed is None else seed
    key = jax.random.fold_in(jax.random.key(seed), STREAM_INIT)
    return models.create_model(
        config.model,
        num_classes=info.num_classes,
        input_shape=tuple(info.image_shape),
        mean=info.mean,
        std=info.std,
        rngs=nnx.Rngs(params=key),
    )


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train: int) -> optax.Schedule:
    per_epoch = max(steps_per_epoch(config, num_train), 1)
    boundaries = {int(b * per_epoch): config.lr_decay_factor for b in config.lr_boundaries_epochs}
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def create_optimizer(model, config: ml_collections.ConfigDict, num_train: int) -> nnx.Optimizer:
    """SGD with momentum and PyTorch-style (coupled) weight decay, step-decayed learning rate."""
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(learning_rate_schedule(config, num_train), momentum=config.momentum),
    )
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


# ---------------------------------------------------------------------------------------------
# S': the masked-and-reconstructed training set.


def example_keys(seed: int, image_idx: jax.Array, copy_idx: jax.Array) -> jax.Array:
    """The mask key of each (image i, copy k): fold_in(fold_in(key(seed), i), k)."""
    root = jax.random.key(seed)
    return jax.vmap(lambda i, k: jax.random.fold_in(jax.random.fold_in(root, i), k))(
        image_idx, copy_idx
    )


def quantize(images: jax.Array) -> jax.Array:
    """Rounds [0,1] images to the uint8 grid S' is stored on (the authors store uint8)."""
    return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0) / 255.0


def reconstruct_examples(
    me_config, seed: int, images: jax.Array, image_idx: jax.Array, copy_idx: jax.Array
) -> jax.Array:
    """S' entries for a batch: each image masked with its (i, k) key at p_k, then ME, quantized.

    Args:
      me_config: the `me` config section.
      seed: the run's seed.
      images: float [B,H,W,C] in [0,1], the training images i.
      image_idx: int [B], the image indices i.
      copy_idx: int [B], the copy indices k in [0, n).
    """
    ps = jnp.asarray(defense.training_ps(me_config))[copy_idx]
    keys = example_keys(seed, image_idx, copy_idx)
    masks = jax.vmap(
        lambda k, p: me.sample_mask(k, images.shape[1:], p, channels=me_config.channels)
    )(keys, ps)
    rec = me.reconstruct(
        images,
        masks,
        method=me_config.method,
        channels=me_config.channels,
        **defense.solver_options(me_config),
    )
    return quantize(rec)


def _sprime_fingerprint(config, num_train: int) -> str:
    import hashlib

    keys = {
        "dataset": config.dataset,
        "num_train": num_train,
        "seed": config.seed,
        "me": {k: v for k, v in config.me.to_dict().items() if k not in ("mode", "votes")},
    }
    return hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def build_sprime(config, data: Data, workdir: str) -> np.ndarray:
    """Builds (or reuses, or finishes) the cached S' [n*M,H,W,C] uint8 in WORKDIR/sprime/.

    The build is written chunk by chunk into a memory-mapped file with a progress record, so
    a build that was killed goes on where it stopped.
    """
    n, num_train = num_copies(config), len(data.train_images)
    total = n * num_train
    folder = os.path.join(workdir, "sprime")
    os.makedirs(folder, exist_ok=True)
    name = f"sprime-{_sprime_fingerprint(config, num_train)}"
    final = os.path.join(folder, name + ".npy")
    if os.path.exists(final):
        arr = np.load(final, mmap_mode="r")
        if arr.shape == (total, *data.train_images.shape[1:]):
            return arr
    partial, progress = final + ".partial", final + ".progress"
    shape = (total, *data.train_images.shape[1:])
    done = 0
    if os.path.exists(partial) and os.path.exists(progress):
        with open(progress) as f:
            done = int(json.load(f)["done"])
        out = np.lib.format.open_memmap(partial, mode="r+")
    else:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)

    @jax.jit
    def build_chunk(images_u8, image_idx, copy_idx):
        rec = reconstruct_examples(
            config.me, config.seed, images_u8.astype(jnp.float32) / 255.0, image_idx, copy_idx
        )
        return jnp.round(rec * 255.0).astype(jnp.uint8)

    chunk = int(config.me.build_batch_size)
    bar = mlog.progress(total=total, initial=done, desc="building S'", unit="img", config=config)
    while done < total:
        e = np.arange(done, min(done + chunk, total))
        pad = chunk - len(e)
        e_pad = np.concatenate([e, np.full((pad,), e[-1])]) if pad else e
        i, k = e_pad // n, e_pad % n
        rec = np.asarray(build_chunk(data.train_images[i], i, k))
        out[done : done + len(e)] = rec[: len(e)]
        done += len(e)
        out.flush()
        with open(progress, "w") as f:
            json.dump({"done": done}, f)
        bar.update(len(e))
    bar.close()
    del out
    os.replace(partial, final)
    os.remove(progress)
    return np.load(final, mmap_mode="r")


# ---------------------------------------------------------------------------------------------
# The train step.


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process, axis 'data' (Auto axis types)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def make_train_step(config, graphdef, mesh, *, online: bool):
    """The jitted step: (state, batch, step) -> (state, metrics sums).

    batch: dict with uint8 `image` [B,H,W,C] (S' entries, or raw images when `online`), int32
    `label`, `image_idx`, `copy_idx` [B].
    """
    me_config, seed = config.me, config.seed
    transform = defense.me_transform(me_config)
    ps_all = jnp.asarray(defense.training_ps(me_config))
    adv = config.adv

    def attack(model, x, y, p, key):
        # PGD through ME with BPDA, fresh masks every step, network in eval mode (running BN
        # statistics), Madry-style random start.
        from menet_jax.attacks import pgd

        model.eval()

        def logits_fn(xx, kk):
            return model(defense.straight_through(xx, transform(kk, xx, p)))

        x_adv = pgd(
            logits_fn,
            x,
            y,
            key,
            eps=adv.eps,
            step_size=adv.step_size,
            steps=adv.steps,
            random_start=adv.random_start,
        )
        model.train()
        return jax.lax.stop_gradient(x_adv)

    def step_fn(state, batch, step):
        model, optimizer = nnx.merge(graphdef, state)
        model.train()
        x = batch["image"].astype(jnp.float32) / 255.0
        y = batch["label"]
        root = jax.random.key(seed)
        if adv.enabled:
            if config.augment:
                x = input_pipeline.augment(
                    jax.random.fold_in(jax.random.fold_in(root, STREAM_AUG), step), x
                )
            p = ps_all[batch["copy_idx"]]
            adv_key = jax.random.fold_in(jax.random.fold_in(root, STREAM_ADV), step)
            x = attack(model, x, y, p, adv_key)
        if online and me_config.method != "none":
            x = reconstruct_examples(me_config, seed, x, batch["image_idx"], batch["copy_idx"])
        if config.augment and not adv.enabled:
            x = input_pipeline.augment(
                jax.random.fold_in(jax.random.fold_in(root, STREAM_AUG), step), x
            )

        def loss_fn(m):
            logits = m(x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        metrics = {"loss": loss * y.shape[0], "correct": correct, "count": y.shape[0]}
        return nnx.state((model, optimizer)), metrics

    replicated = NamedSharding(mesh, P())
    return jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated))


def host_batch(config, data: Data, source: np.ndarray, step: int, *, online: bool) -> dict:
    """This process's slice of global batch `step` as numpy arrays."""
    n = num_copies(config)
    idx = input_pipeline.local_batch_indices(
        config.seed,
        step,
        num_examples=n * len(data.train_images),
        batch_size=config.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    image_idx, copy_idx = idx // n, idx % n
    images = source[image_idx] if online else source[idx]
    return {
        "image": np.asarray(images),
        "label": data.train_labels[image_idx].astype(np.int32),
        "image_idx": image_idx.astype(np.int32),
        "copy_idx": copy_idx.astype(np.int32),
    }


def to_global(batch: dict, sharding: NamedSharding) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Evaluation of clean accuracy (the attack suite lives in evaluate.py).


def evaluate_clean(
    classifier: defense.DefendedClassifier,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    key: jax.Array,
    votes: int = 0,
    config=None,
) -> dict:
    """Accuracy of the bare network and of ME-Net inference (and majority vote if votes > 0).

    Each batch b uses the key fold_in(key, b) for its masks.
    """
    use_me = classifier.config.me.method != "none"

    @jax.jit
    def batch_correct(x_u8, y, valid, k):
        x = x_u8.astype(jnp.float32) / 255.0
        out = {"network": classifier.network(x)}
        if use_me:
            out["menet"] = classifier.defended(x, k)
            if votes:
                out["vote"] = classifier.defended(x, jax.random.fold_in(k, 1), votes=votes)
        return {name: jnp.sum((jnp.argmax(v, -1) == y) * valid) for name, v in out.items()}

    totals: dict[str, int] = {}
    num = len(images)
    bar = mlog.progress(total=num, desc="evaluating", unit="img", config=config)
    for b, start in enumerate(range(0, num, batch_size)):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        valid = np.ones(len(y), np.float32)
        if len(y) < batch_size:  # pad to one compiled shape
            pad = batch_size - len(y)
            x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
            y = np.concatenate([y, np.repeat(y[-1:], pad, 0)])
            valid = np.concatenate([valid, np.zeros(pad, np.float32)])
        res = batch_correct(x, y.astype(np.int32), valid, jax.random.fold_in(key, b))
        for name, v in res.items():
            totals[name] = totals.get(name, 0) + int(v)
        bar.update(min(batch_size, num - start))
    bar.close()
    out = {f"{name}_accuracy": totals[name] / num for name in totals}
    out["clean_accuracy"] = out.get("menet_accuracy", out["network_accuracy"])
    return out


def eval_split(config, data: Data) -> tuple[np.ndarray, np.ndarray]:
    n = len(data.test_images) if config.num_eval_examples < 0 else config.num_eval_examples
    return data.test_images[:n], data.test_labels[:n]


# ---------------------------------------------------------------------------------------------
# The loop.


def _check_devices(config) -> None:
    if config.batch_size % jax.device_count():
        raise ConfigError(
            f"config.batch_size={config.batch_size} must be divisible by the number of devices "
            f"({jax.device_count()})"
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains ME-Net as configured, checkpointing to and resuming from `workdir`.

    Returns:
      The summary also written to WORKDIR/summary.json.
    """
    validate_config(config)
    _check_devices(config)
    os.makedirs(workdir, exist_ok=True)
    checkpoint.write_config(workdir, config)
    t_start = time.time()
    data = load_data(config)
    num_train = len(data.train_images)
    online = config.me.mode == "online" or config.adv.enabled
    sprime_time = 0.0
    if config.me.method != "none" and not online:
        t0 = time.time()
        source = build_sprime(config, data, workdir)
        sprime_time = time.time() - t0
    else:
        source = data.train_images

    model = create_model(config, data.info)
    optimizer = create_optimizer(model, config, num_train)
    graphdef, state = nnx.split((model, optimizer))
    manager = checkpoint.manager(workdir, keep=config.keep_checkpoints)
    start_step, state = checkpoint.restore_latest(manager, state)
    mesh = make_mesh()
    state = jax.device_put(state, NamedSharding(mesh, P()))
    data_sharding = NamedSharding(mesh, P("data"))
    train_step = make_train_step(config, graphdef, mesh, online=online)

    num_steps = total_steps(config, num_train)
    writer = mlog.MetricWriter(workdir, enabled=jax.process_index() == 0)
    bar = mlog.progress(
        total=num_steps, initial=start_step, desc="training", unit="step", config=config
    )
    sums, t_log, step_log = None, time.time(), start_step
    t_train = time.time()
    step = start_step
    try:
        for step in range(start_step, num_steps):
            batch = to_global(host_batch(config, data, source, step, online=online), data_sharding)
            state, metrics = train_step(state, batch, jnp.asarray(step, jnp.int32))
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
            done = step + 1
            bar.update(1)
            if done % config.log_every_steps == 0 or done == num_steps:
                record = _finish_log_window(sums, done, t_log, step_log, config, num_train)
                writer.write(done, record)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
                sums, t_log, step_log = None, time.time(), done
            if done % config.checkpoint_every_steps == 0 or done == num_steps:
                if sums is not None:  # make sure nothing non-finite goes into a checkpoint
                    _check_finite(float(sums["loss"]), done)
                checkpoint.save(manager, done, state)
    finally:
        bar.close()
        manager.wait_until_finished()
    train_time = time.time() - t_train

    model, _ = nnx.merge(graphdef, state)
    classifier = defense.DefendedClassifier(model, config, data.info.num_classes)
    images, labels = eval_split(config, data)
    eval_key = jax.random.fold_in(jax.random.key(config.seed), STREAM_EVAL)
    results = evaluate_clean(
        classifier,
        images,
        labels,
        batch_size=config.eval_batch_size,
        key=eval_key,
        votes=config.me.votes,
        config=config,
    )
    summary = {
        **results,
        "train_time_s": round(train_time + sprime_time, 2),
        "sprime_time_s": round(sprime_time, 2),
        "total_time_s": round(time.time() - t_start, 2),
        "steps": num_steps,
        "resumed_from_step": start_step,
        "num_eval_examples": len(labels),
        "inference_p": classifier.inference_p,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "config": config.to_dict(),
    }
    writer.write(num_steps, {k: v for k, v in results.items()})
    writer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return summary


def _check_finite(loss_sum: float, step: int) -> None:
    if not np.isfinite(loss_sum):
        raise TrainingDivergedError(
            f"the training loss became {loss_sum} before step {step}; stopped without saving, "
            "the last good checkpoint is intact (lower config.learning_rate?)"
        )


def _finish_log_window(sums, done, t_log, step_log, config, num_train) -> dict:
    sums = jax.device_get(sums)
    count = float(sums["count"])
    loss = float(sums["loss"]) / count
    _check_finite(loss, done)
    elapsed = max(time.time() - t_log, 1e-9)
    lr = learning_rate_schedule(config, num_train)(done - 1)
    return {
        "train_loss": loss,
        "train_accuracy": float(sums["correct"]) / count,
        "learning_rate": float(lr),
        "epoch": done / max(steps_per_epoch(config, num_train), 1),
        "images_per_s": count / elapsed,
    }
