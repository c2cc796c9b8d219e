"""L-inf PGD with the CW margin loss, EOT, best-iterate selection and random restarts.

References: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018 (PGD, CW-L-inf margin loss, restarts); Athalye et al., "Synthesizing Robust
Adversarial Examples", ICML 2018 (EOT); Tramer et al., "On Adaptive Attacks to Adversarial
Example Defenses", NeurIPS 2020 (EOT + best iterate against ME-Net).

Keys (documented so that results can be reproduced outside this module):
  k_attack, k_judge = split(key)
  restart r:          k_r = fold_in(k_attack, r); k_start, k_steps = split(k_r)
  random start:       uniform(k_start, x.shape, -eps, eps)
  model keys, step t: split(fold_in(k_steps, t), eot_samples)   (t = 0 .. steps-1; with
                      keep_best the final iterate is scored with t = steps)
  restart judging:    logits_fn(x_r, k_judge), one call per restart (only when restarts > 1).
"""

from functools import partial

import jax
import jax.numpy as jnp

from menet_jax.attacks.arguments import check_count, check_inputs, check_nonneg
from menet_jax.attacks.linf import project_linf, start_point
from menet_jax.attacks.logits_fn import LogitsFn, merge_fn, split_fn
from menet_jax.attacks.losses import LOSSES, attack_loss


def _loss_and_grad(example_losses, z, key):
    """Per-example losses [B] at z and their gradients, [B, H, W, C]."""

    # Examples are independent, so the gradient of the sum is the per-example gradient.
    def total(zz):
        per_example = example_losses(zz, key)
        return jnp.sum(per_example), per_example

    (_, per_example), grad = jax.value_and_grad(total, has_aux=True)(z)
    return per_example, grad


def _eot_loss_and_grad(example_losses, z, step_key, eot_samples):
    """Losses and gradients averaged over `eot_samples` model keys split from `step_key`."""
    keys = jax.random.split(step_key, eot_samples)
    if eot_samples == 1:
        return _loss_and_grad(example_losses, z, keys[0])

    # A loop, not a vmap, so memory does not grow with eot_samples.
    def body(i, acc):
        per_example, grad = _loss_and_grad(example_losses, z, keys[i])
        return acc[0] + per_example, acc[1] + grad

    zeros = (jnp.zeros((z.shape[0],), jnp.float32), jnp.zeros_like(z))
    total_loss, total_grad = jax.lax.fori_loop(0, eot_samples, body, zeros)
    return total_loss / eot_samples, total_grad / eot_samples


def _eot_loss(example_losses, z, step_key, eot_samples):
    """Losses averaged over the same model keys as `_eot_loss_and_grad`, without gradients."""
    keys = jax.random.split(step_key, eot_samples)
    total = jax.lax.fori_loop(
        0,
        eot_samples,
        lambda i, acc: acc + example_losses(z, keys[i]),
        jnp.zeros((z.shape[0],), jnp.float32),
    )
    return total / eot_samples


def _run(example_losses, x, k_run, eps, step_size, steps, *, eot_samples, keep_best, random_start):
    """One PGD run (one restart) with its own key: signed EOT-gradient steps, projected.

    Returns the last iterate, or with `keep_best` per example the iterate of highest mean loss
    (the last one scored with the keys of step `steps`).
    """
    k_start, k_steps = jax.random.split(k_run)
    x0 = start_point(k_start, x, eps, random_start=random_start)

    def step(t, carry):
        z, best_z, best_loss = carry
        per_example, grad = _eot_loss_and_grad(
            example_losses, z, jax.random.fold_in(k_steps, t), eot_samples
        )
        if keep_best:
            better = per_example > best_loss
            best_z = jnp.where(better[:, None, None, None], z, best_z)
            best_loss = jnp.where(better, per_example, best_loss)
        z = project_linf(z + step_size * jnp.sign(grad), x, eps)
        return z, best_z, best_loss

    init = (x0, x0, jnp.full((x.shape[0],), -jnp.inf, jnp.float32))
    z, best_z, best_loss = jax.lax.fori_loop(0, steps, step, init)
    if not keep_best:
        return z
    last_loss = _eot_loss(example_losses, z, jax.random.fold_in(k_steps, steps), eot_samples)
    return jnp.where((last_loss > best_loss)[:, None, None, None], z, best_z)


def _best_of_restarts(run, judge, restarts):
    """Per example, the best of runs 0 .. restarts-1 by (success, loss) under `judge`.

    `run(r)` returns the images of restart r; `judge(z)` their (success [B], loss [B]).
    """

    def restart_body(r, carry):
        best_z, best_success, best_loss = carry
        z = run(r)
        success, per_example = judge(z)
        # Lexicographic (success, loss): a result never gets worse with more restarts.
        better = (success & ~best_success) | ((success == best_success) & (per_example > best_loss))
        best_z = jnp.where(better[:, None, None, None], z, best_z)
        return (
            best_z,
            jnp.where(better, success, best_success),
            jnp.where(better, per_example, best_loss),
        )

    z0 = run(0)
    init = (z0, *judge(z0))
    best_z, _, _ = jax.lax.fori_loop(1, restarts, restart_body, init)
    return best_z


@partial(
    jax.jit,
    static_argnames=("fn_static", "restarts", "loss", "eot_samples", "keep_best", "random_start"),
)
def _pgd(
    fn_dynamic,
    x,
    y,
    key,
    eps,
    step_size,
    steps,
    kappa,
    *,
    fn_static,
    restarts,
    loss,
    eot_samples,
    keep_best,
    random_start,
):
    logits_fn = merge_fn(fn_dynamic, fn_static)

    def example_losses(z, k):
        return attack_loss(loss, logits_fn(z, k), y, kappa)

    k_attack, k_judge = jax.random.split(key)

    def run(r):
        return _run(
            example_losses,
            x,
            jax.random.fold_in(k_attack, r),
            eps,
            step_size,
            steps,
            eot_samples=eot_samples,
            keep_best=keep_best,
            random_start=random_start,
        )

    if restarts == 1:
        return run(0)

    def judge(z):
        logits = logits_fn(z, k_judge)
        return jnp.argmax(logits, axis=-1) != y, attack_loss(loss, logits, y, kappa)

    return _best_of_restarts(run, judge, restarts)


def pgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    kappa: float = 0.0,
    eot_samples: int = 1,
    keep_best: bool = False,
) -> jax.Array:
    """L-inf projected gradient ascent (Madry et al. 2018), one jitted computation.

    Each step moves every pixel by `step_size * sign(grad)` of the per-example loss and projects
    onto the eps-ball around `x` and [0, 1]. The step loop and the restart loop are `lax` loops:
    `steps` is a traced value (changing it does not retrace), the other options are static.

    Args:
      logits_fn: pure, jittable `(x, key) -> logits [B, K]`; the key feeds the model's own
        randomness (ME-Net's masks), deterministic models ignore it. A plain function is a
        static jit argument hashed by identity (pass the same object to avoid retracing); a
        pytree callable (`jax.tree_util.Partial(apply, params)`, an NNX module) passes its
        arrays as traced arguments. Examples must be independent (no batch statistics).
      x: images [B, H, W, C] in [0, 1].
      y: integer labels [B].
      key: typed key (`jax.random.key`); see the module docstring for how it is split.
      eps: L-inf radius >= 0.
      step_size: step per iteration (>= 0).
      steps: number of iterations (>= 0).
      random_start: start each restart from a uniform point of the eps-ball.
      restarts: independent runs (>= 1); per example the result kept is a successful one
        (misclassified by one call of `logits_fn` with a key the attack never used), else the
        one of highest loss at that call. Restart r uses the same keys whatever `restarts` is,
        so more restarts never make an example's result worse.
      loss: "ce" (cross-entropy), "cw" (Madry's CW-L-inf margin loss; the attacker minimises
        max(z_y - max_{j != y} z_j, -kappa)) or "dlr" (Croce and Hein's difference of logits
        ratio, `losses.dlr_loss`; at least 3 classes).
      kappa: confidence of the "cw" loss (>= 0).
      eot_samples: model keys per step (>= 1); the gradient (and loss) is their mean.
      keep_best: return, per example, the iterate (the final one included) of highest mean loss
        over the EOT keys of its step, instead of the last iterate.

    Returns:
      Adversarial images, float32 [B, H, W, C], within `eps` of `x` (L-inf) and in [0, 1].
    """
    x, y = check_inputs(x, y, key)
    check_nonneg("eps", eps)
    check_nonneg("step_size", step_size)
    check_nonneg("kappa", kappa)
    steps = check_count("steps", steps, 0)
    restarts = check_count("restarts", restarts, 1)
    eot_samples = check_count("eot_samples", eot_samples, 1)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    dynamic, static = split_fn(logits_fn)
    return _pgd(
        dynamic,
        x,
        y,
        key,
        jnp.float32(eps),
        jnp.float32(step_size),
        jnp.int32(steps),
        jnp.float32(kappa),
        fn_static=static,
        restarts=restarts,
        loss=loss,
        eot_samples=eot_samples,
        keep_best=bool(keep_best),
        random_start=bool(random_start),
    )
