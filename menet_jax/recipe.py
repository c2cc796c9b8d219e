"""The training recipe a config describes: the model, the optimizer, the learning-rate schedule
and the step counts (copies per image, steps per epoch, total steps).

`create_model(config, info)` builds the configured network initialised from the run's seed;
`create_optimizer(model, config, num_train)` the SGD of supplement Table 8 (docs/method.md §4).
Training uses both; restoring a classifier for evaluation (`menet_jax.checkpoint.load`) uses only
`create_model` and reads only the model's part of a checkpoint.
"""

from __future__ import annotations

import ml_collections
import optax
from flax import nnx

from menet_jax import input_pipeline, models, rng


def num_copies(config: ml_collections.ConfigDict) -> int:
    """n: masked copies per training image (1 for the vanilla baseline)."""
    return 1 if config.me.method == "none" else int(config.me.num_masks)


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
    """Optimizer steps in one pass over S' (n*M examples; M for the vanilla model)."""
    return (num_train * num_copies(config)) // config.batch_size


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """config.num_train_steps, or num_epochs worth of steps when it is None."""
    if config.num_train_steps is not None:
        return int(config.num_train_steps)
    return int(round(config.num_epochs * steps_per_epoch(config, num_train)))


def create_model(
    config: ml_collections.ConfigDict, info: input_pipeline.DatasetInfo, *, seed: int | None = None
) -> nnx.Module:
    """The configured network, initialised from the run's seed (or `seed`).

    Its input normalisation is `config.model_mean` / `model_std`, or the dataset's when they are
    None; a ResNet-18's stage widths follow `config.model_width`.
    """
    seed = config.seed if seed is None else seed
    mean, std = info.mean, info.std
    if config.get("model_mean") is not None:  # the authors' constants (docs/method.md §7)
        mean, std = tuple(config.model_mean), tuple(config.model_std)
    width = config.get("model_width", 64)
    return models.create_model(
        config.model,
        num_classes=info.num_classes,
        input_shape=tuple(info.image_shape),
        mean=mean,
        std=std,
        width=None if width == 64 else int(width),
        rngs=nnx.Rngs(params=rng.stream(seed, rng.INIT)),
    )


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train: int) -> optax.Schedule:
    """The learning rate of each step.

    `lr_schedule="step"`: learning_rate, multiplied by lr_decay_factor at each of
    lr_boundaries_epochs. `"warmup_cosine"`: a linear rise from 0 to learning_rate over the first
    lr_warmup_fraction of the run's steps, then a cosine decay to 0 at its last step.
    """
    if config.get("lr_schedule", "step") == "warmup_cosine":
        total = max(total_steps(config, num_train), 1)
        warmup = int(config.lr_warmup_fraction * total)
        return optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, warmup_steps=warmup, decay_steps=total, end_value=0.0
        )
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
