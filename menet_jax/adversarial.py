"""The adversarial examples of adversarial training (docs/method.md §3.5).

With `adv.enabled`, each train step trains on PGD examples made through ME with BPDA, and then
reconstructed once more with fresh masks (`final_masks`) and put on the S' grid. This module owns
both halves; `menet_jax.train` calls the function `make_adversarial_examples` returns inside its
jitted step. The attack itself is `menet_jax.attacks.pgd` on the defended classifier's logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from menet_jax import attacks, defense, me, rng, sprime
from menet_jax import mesh as mesh_lib


def final_masks(me_config, seed: int, step, image_idx, copy_idx, shape) -> jax.Array:
    """Adversarial training's masks for the final reconstruction (docs/method.md §3.5).

    Drawn afresh for every (step, image i, copy k), at copy k's p, as the authors' code draws a
    new mask on every forward pass; not the (i, k) mask of S', which would repeat every epoch.
    """
    root = rng.named(rng.step_key(seed, rng.ADVERSARIAL, step), "final_mask")
    keys = jax.vmap(lambda i, k: jax.random.fold_in(jax.random.fold_in(root, i), k))(
        image_idx, copy_idx
    )
    ps = jnp.asarray(defense.training_ps(me_config))[copy_idx]
    return jax.vmap(lambda k, p: me.sample_mask(k, tuple(shape), p, channels=me_config.channels))(
        keys, ps
    )


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
    ps_all = jnp.asarray(defense.training_ps(me_config))

    def solve(x, masks):
        return me.reconstruct(
            x, masks, method=me_config.method, channels=me_config.channels,
            **defense.solver_options(me_config),
        )  # fmt: skip

    final_reconstruct = mesh_lib.per_device(solve, mesh, 2)  # ME per device, as S' online

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
        if me_config.method == "none":
            return x
        masks = final_masks(
            me_config, seed, step, batch["image_idx"], batch["copy_idx"], x.shape[1:]
        )
        return sprime.quantize(final_reconstruct(x, masks))  # to the S' grid, as the online path

    return adversarial_examples
