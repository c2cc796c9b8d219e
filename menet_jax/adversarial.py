"""The adversarial examples of adversarial training (docs/method.md §3.5).

With `adv.enabled`, each train step trains on PGD examples made through ME with BPDA, and then
reconstructed once more with fresh masks (`final_masks`) and put on the S' grid, both by the
configured preprocessing (`menet_jax.preprocess`). This module owns both halves;
`menet_jax.train` calls the function `make_adversarial_examples` returns inside its jitted step.
The attack itself is `menet_jax.attacks.pgd` on the defended classifier's logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from menet_jax import attacks, defense, preprocess, rng


def final_masks(me_config, seed: int, step, image_idx, copy_idx, shape) -> jax.Array:
    """Adversarial training's masks for the final reconstruction (docs/method.md §3.5).

    Drawn afresh for every (step, image i, copy k), at copy k's p, as the authors' code draws a
    new mask on every forward pass; not the (i, k) mask of S', which would repeat every epoch.
    """
    root = rng.named(rng.step_key(seed, rng.ADVERSARIAL, step), "final_mask")
    keys = rng.per_example(root, image_idx, copy_idx)
    return preprocess.from_config(me_config).example_masks(keys, copy_idx, shape)


def make_adversarial_examples(
    config: ml_collections.ConfigDict, mesh: Mesh, num_classes: int
) -> Callable:
    """The adversarial examples a train step trains on, as a function to call inside its jit.

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

    def attack(model, x, y, p, key):
        # PGD through ME with BPDA, fresh masks every step at each example's p, BatchNorm on
        # running statistics (adv.attack_bn "eval") or on each pass's batch statistics ("train",
        # the authors'; the running statistics do not move), Madry-style random start.
        clf = defense.DefendedClassifier.from_model(model, config, num_classes)  # eval mode
        clf = dataclasses.replace(clf, mesh=mesh)  # ME per device, as the final reconstruction
        x_adv = attacks.pgd(
            clf.logits_fn("menet", gradient="bpda", p=p, bn=adv.attack_bn),
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

    def adversarial_examples(model, x, batch, step):
        p = ps_all[batch["copy_idx"]]
        x = attack(model, x, batch["label"], p, rng.step_key(seed, rng.ADVERSARIAL, step))
        if pre.identity:
            return x
        masks = final_masks(
            me_config, seed, step, batch["image_idx"], batch["copy_idx"], x.shape[1:]
        )
        return preprocess.quantize(final_reconstruct(x, masks))  # the S' grid, as online S'

    return adversarial_examples
