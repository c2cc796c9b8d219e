"""ME-Net training (Algorithm 1; docs/method.md §3): the data-parallel train step and the loop.

One epoch is one pass over S' (`menet_jax.sprime`): example e of the epoch stands for copy
k = e % n of training image i = e // n. `me.mode="offline"` trains on the cached S';
`me.mode="online"` reconstructs the same entries inside the jitted step with the same keys, so it
trains on the same S' without storing it. `me.method="none"` is the vanilla baseline (n = 1, no
ME). `adv.enabled` trains on PGD examples made through ME with BPDA (docs/method.md §3.5), which
`menet_jax.adversarial` makes inside the step.

The step is one `jax.jit` over a 1-D device mesh ('data'): the batch is sharded over every device
of every process, the model and optimizer state are replicated. All randomness derives from
(seed, step) or (seed, example) (`menet_jax.rng`), so a resumed run repeats an uninterrupted one.
After training, `train_and_evaluate` measures clean accuracy (bare network and ME-Net inference,
`menet_jax.clean_accuracy`) and writes WORKDIR/summary.json; the attack suite is
`menet_jax.evaluation`.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from menet_jax import (
    adversarial,
    checkpoint,
    clean_accuracy,
    defense,
    input_pipeline,
    monitor,
    paths,
    preemption,
    preprocess,
    recipe,
    rng,
    sprime,
)
from menet_jax import mesh as mesh_lib
from menet_jax.config import ConfigError, check_model_fits, validate


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf."""


@dataclasses.dataclass
class Data:
    """A run's train and test splits in host memory."""

    info: input_pipeline.DatasetInfo
    train_images: np.ndarray  # uint8 [M,H,W,C]
    train_labels: np.ndarray  # int32 [M]
    test_images: np.ndarray
    test_labels: np.ndarray


def load_data(config: ml_collections.ConfigDict) -> Data:
    """Loads the train and test splits of `config.dataset` as uint8 numpy arrays."""
    data_dir, progress = config.data_dir or None, config.progress_bar
    info = input_pipeline.get_info(config.dataset, data_dir=data_dir, progress=progress)
    train = input_pipeline.load_split(config.dataset, "train", data_dir=data_dir, progress=progress)
    test = input_pipeline.load_split(config.dataset, "test", data_dir=data_dir, progress=progress)
    if config.num_train_examples is not None:
        train = tuple(a[: config.num_train_examples] for a in train)
    return Data(info, *train, *test)


# ---------------------------------------------------------------------------------------------
# The train step.


make_mesh = mesh_lib.data_mesh  # the run's mesh (train.make_mesh for notebooks and tests)


def make_train_step(config, graphdef, mesh, *, online: bool, num_train: int):
    """The jitted step: (train state, batch, step) -> (train state, metrics sums).

    batch: dict with uint8 `image` [B,H,W,C] (S' entries, or raw images when `online`), int32
    `label`, `image_idx`, `copy_idx` [B]. num_train: training images M (adversarial training's
    eps ramp counts its epochs in steps).
    """
    me_config, seed = config.me, config.seed
    info = input_pipeline.get_info(config.dataset, data_dir=config.data_dir)
    pre = preprocess.from_config(me_config)
    reconstruct = pre.examples_on_devices(seed, mesh)  # S' entries per device: no global loop test
    if config.adv.enabled:
        adversarial_examples = adversarial.make_adversarial_examples(
            config, mesh, info.num_classes, num_train=num_train
        )

    def step_fn(train_state, batch, step):
        model, optimizer = nnx.merge(graphdef, train_state)
        model.train()
        x = input_pipeline.to_float(batch["image"])
        y = batch["label"]
        aug_key = rng.step_key(seed, rng.AUGMENT, step)
        if config.adv.enabled:
            if config.augment:
                x = input_pipeline.augment(aug_key, x)
            x = adversarial_examples(model, x, batch, step)
        else:
            if online and not pre.identity:
                x = reconstruct(x, batch["image_idx"], batch["copy_idx"])
            if config.augment:
                x = input_pipeline.augment(aug_key, x)

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
    n = recipe.num_copies(config)
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
# The loop.


def _check_devices(config) -> None:
    if config.batch_size % jax.device_count():
        raise ConfigError(
            f"config.batch_size={config.batch_size} must be divisible by the number of devices "
            f"({jax.device_count()})"
        )


@preemption.watch()
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains ME-Net as configured, checkpointing to and resuming from `workdir`.

    On SIGTERM (`menet_jax.preemption`) the S' build stops after its current chunk and training
    after its current step, with a checkpoint at that step; both raise `preemption.Preempted`.

    Returns:
      The summary also written to WORKDIR/summary.json.
    """
    validate(config)  # `main` checks the eval section too, before training
    _check_devices(config)
    check_model_fits(config)  # the dataset's images into config.model, before any work
    paths.makedirs(workdir)
    checkpoint.write_config(workdir, config)
    t_start = time.time()
    data = load_data(config)
    num_train = len(data.train_images)
    online = config.me.mode == "online" or config.adv.enabled
    sprime_time = 0.0
    if config.me.method != "none" and not online:
        t0 = time.time()
        source = sprime.build(config, data.train_images, workdir)
        sprime_time = time.time() - t0
    else:
        source = data.train_images

    model = recipe.create_model(config, data.info)
    optimizer = recipe.create_optimizer(model, config, num_train)
    graphdef, train_state = nnx.split((model, optimizer))
    manager = checkpoint.manager(workdir, keep=config.keep_checkpoints)
    start_step, train_state = checkpoint.restore_latest(manager, train_state)
    mesh = make_mesh()
    train_state = jax.device_put(train_state, NamedSharding(mesh, P()))
    data_sharding = NamedSharding(mesh, P("data"))
    train_step = make_train_step(config, graphdef, mesh, online=online, num_train=num_train)

    num_steps = recipe.total_steps(config, num_train)
    writer = monitor.MetricWriter(workdir, enabled=jax.process_index() == 0)
    bar = monitor.progress(
        total=num_steps, initial=start_step, desc="training", unit="step", config=config
    )
    sums, t_log, step_log = None, time.time(), start_step
    t_train = time.time()
    step = start_step
    try:
        for step in range(start_step, num_steps):
            batch = to_global(host_batch(config, data, source, step, online=online), data_sharding)
            train_state, metrics = train_step(train_state, batch, jnp.asarray(step, jnp.int32))
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
            done = step + 1
            bar.update(1)
            if done % config.log_every_steps == 0 or done == num_steps:
                record = _finish_log_window(sums, done, t_log, step_log, config, num_train)
                writer.write(done, record)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
                sums, t_log, step_log = None, time.time(), done
            periodic = done % config.checkpoint_every_steps == 0 or done == num_steps
            preempted = preemption.requested(done)  # every step, on every process
            if periodic or preempted:
                if sums is not None:  # make sure nothing non-finite goes into a checkpoint
                    _check_finite(float(sums["loss"]), done)
                checkpoint.save(manager, done, train_state)
            if preempted:
                manager.wait_until_finished()
                raise preemption.Preempted(
                    f"preempted at step {done}; checkpoint saved; run the same command to resume"
                )
    finally:
        bar.close()
        manager.wait_until_finished()
    train_time = time.time() - t_train

    model, _ = nnx.merge(graphdef, train_state)
    classifier = defense.DefendedClassifier.from_model(
        model, config, data.info.num_classes, step=num_steps
    )
    images, labels = clean_accuracy.eval_split(config, data.test_images, data.test_labels)
    results = clean_accuracy.evaluate_clean(
        classifier,
        images,
        labels,
        batch_size=config.eval_batch_size,
        key=rng.stream(config.seed, rng.CLEAN_EVAL),
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
        text = json.dumps(summary, indent=2, default=str)
        paths.write_text(paths.join(workdir, "summary.json"), text)
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
    lr = recipe.learning_rate_schedule(config, num_train)(done - 1)
    return {
        "train_loss": loss,
        "train_accuracy": float(sums["correct"]) / count,
        "learning_rate": float(lr),
        "epoch": done / max(recipe.steps_per_epoch(config, num_train), 1),
        "images_per_s": count / elapsed,
    }
