"""The adversarial examples of adversarial training (docs/method.md §3.5).

With `adv.enabled`, each train step trains on PGD examples made through ME with BPDA, and then
reconstructed once more with fresh masks (`final_masks`) and put on the S' grid, both by the
configured preprocessing (`menet_jax.preprocess`). This module owns both halves;
`menet_jax.train` calls the function `make_adversarial_examples` returns inside its jitted step.
The attack itself is `menet_jax.attacks.pgd` on the defended classifier's logits, with eps and
its step size ramped up from 0 over the first `adv.eps_ramp_epochs` epochs (`ramp_scale`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from menet_jax import attacks, defense, preprocess, recipe, rng


def final_masks(me_config, seed: int, step, image_idx, copy_idx, shape) -> jax.Array:
    """Adversarial training's masks for the final reconstruction (docs/method.md §3.5).

    Drawn afresh for every (step, image i, copy k), at copy k's p, as the authors' code draws a
    new mask on every forward pass; not the (i, k) mask of S', which would repeat every epoch.
    """
    root = rng.named(rng.step_key(seed, rng.ADVERSARIAL, step), "final_mask")
    keys = rng.per_example(root, image_idx, copy_idx)
    return preprocess.from_config(me_config).example_masks(keys, copy_idx, shape)


def ramp_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """The steps of `adv.eps_ramp_epochs` (0: no ramp), counted as the learning-rate boundaries."""
    return int(config.adv.eps_ramp_epochs * recipe.steps_per_epoch(config, num_train))


def ramp_scale(step: jax.Array, ramp: int) -> jax.Array:
    """The fraction of eps and step size at train step `step` (traced): min(1, step / ramp)."""
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / ramp)


def make_adversarial_examples(
    config: ml_collections.ConfigDict, mesh: Mesh, num_classes: int, *, num_train: int
) -> Callable:
    """The adversarial examples a train step trains on, as a function to call inside its jit.

    Args:
      config: the run's config (`me`, `adv`, `seed`; `batch_size` for the ramp's steps).
      mesh: the run's device mesh.
      num_classes: the dataset's labels.
      num_train: training images M (one epoch of the ramp is M*n / batch_size steps).

    Returns:
      fn(model, x, batch, step) -> the examples: PGD through ME with BPDA from x (float [B,H,W,C]
      in [0, 1], already augmented), then, unless `me.method="none"`, the final reconstruction
      with fresh masks, quantized to the S' grid. `batch` supplies `label`, `image_idx` and
      `copy_idx`; the model is left in train mode.
    """
    me_config, seed, adv = config.me, config.seed, config.adv
    pre = preprocess.from_config(me_config)
    ps_all = jnp.asarray(pre.training_ps())
    final_reconstruct = pre.on_devices(mesh)  # ME per device, as S' online
    ramp = ramp_steps(config, num_train)

    def attack(model, x, y, p, key, step):
        # PGD through ME with BPDA, fresh masks every step at each example's p, BatchNorm on
        # running statistics (adv.attack_bn "eval") or on each pass's batch statistics ("train",
        # the authors'; the running statistics do not move), Madry-style random start.
        clf = defense.DefendedClassifier.from_model(model, config, num_classes)  # eval mode
        clf = dataclasses.replace(clf, mesh=mesh)  # ME per device, as the final reconstruction
        eps, step_size = adv.eps, adv.step_size
        if ramp:  # without a ramp the attack is traced with eps and step size as constants
            scale = ramp_scale(step, ramp)
            eps, step_size = eps * scale, step_size * scale
        x_adv = attacks.pgd(
            clf.logits_fn("menet", gradient="bpda", p=p, bn=adv.attack_bn),
            x,
            y,
            key,
            eps=eps,
            step_size=step_size,
            steps=adv.steps,
            random_start=adv.random_start,
        )
        model.train()
        return jax.lax.stop_gradient(x_adv)

    def adversarial_examples(model, x, batch, step):
        p = ps_all[batch["copy_idx"]]
        x = attack(model, x, batch["label"], p, rng.step_key(seed, rng.ADVERSARIAL, step), step)
        if pre.identity:
            return x
        masks = final_masks(
            me_config, seed, step, batch["image_idx"], batch["copy_idx"], x.shape[1:]
        )
        return preprocess.quantize(final_reconstruct(x, masks))  # the S' grid, as online S'

    return adversarial_examples
