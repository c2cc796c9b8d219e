"""APGD (Auto-PGD) in the L-inf ball with cross-entropy or DLR losses and EOT.

References: Croce and Hein, "Reliable Evaluation of Adversarial Robustness with an Ensemble of
Diverse Parameter-free Attacks", ICML 2020 (APGD, its Algorithm 1, the DLR losses); AutoAttack,
github.com/fra31/auto-attack (`autoattack/autopgd_base.py`), whose version "rand" runs APGD-CE
and APGD-DLR against randomised defences: 100 iterations, 1 restart, the gradient averaged over
20 model draws per step; Athalye et al., "Synthesizing Robust Adversarial Examples", ICML 2018
(EOT). The method: docs/method.md §5.5.

The algorithm, per example (N = steps, P the projection onto the eps-ball and [0, 1], f and g
the loss and its gradient, each the mean over `eot_samples` model keys at the point):
  x_0 a uniform point of the ball (or x); eta = 2 * eps;
  x_1 = P(x_0 + eta * sign(g(x_0)));
  x_{k+1} = P(x_k + a * (z - x_k) + (1 - a) * (x_k - x_{k-1})), z = P(x_k + eta * sign(g(x_k))),
  a = `momentum`. At the checkpoints w_j = ceil(p_j * N), p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (`checkpoints`), eta is halved and the iterate
  (with its gradient) reset to the best point so far when
    1. fewer than rho * (w_j - w_{j-1}) of the steps since w_{j-1} raised f, or
    2. eta was not halved at w_{j-1} and the best f has not risen since w_{j-1} (not at w_1).
  All of it is batched: eta, the counts and the best point are per example.

What it returns, per example: `return_best="loss"` (the default), the point of highest mean loss
among x_0 .. x_N; `"adversarial"`, the last iterate misclassified on a strict majority of its
step's EOT draws, else the point of highest mean loss; `"single_draw"`, AutoAttack's rule: the
last iterate that the last of its step's EOT draws misclassified, else x itself (what
AutoAttack's `perturb` returns for an example it did not fool; used by the `autoattack_rand` row,
docs/method.md §6.9). AutoAttack's single run computes both
(`x_best`, and `x_best_adv`, the last iterate its last draw misclassified); without
`best_loss=True` its `perturb` returns the second where some iterate was misclassified and x
itself elsewhere. Against a randomised model one draw's mistake is weak evidence that a fresh
mask errs too, and the evaluation judges with fresh masks (docs/method.md §6.1), so the point
of highest loss averaged over many draws is the natural candidate; for a deterministic model
"adversarial" is AutoAttack's choice. Restarts are further calls with other keys, each judged
on its own (§6.3).

Where this follows the paper rather than AutoAttack's code, or differs from both, and why:
  * The loss is averaged over the EOT draws like the gradient; AutoAttack averages only the
    gradient and drives the best point, the checkpoints and the prediction by the last draw's
    loss: a maximum over 100 single noisy draws picks lucky draws, not strong points.
  * Checkpoints are the paper's ceil(p_j * N). AutoAttack's code uses windows of int(0.22 N)
    steps shrinking by max(int(0.03 N), 1) to max(int(0.06 N), 1): the same for N = 100,
    different for other N.
  * Condition 1 is the paper's strict "<" over the window's steps, the first window including
    the step from x_0 to x_1; AutoAttack's code uses "<=", and its first window compares x_1
    with a zero placeholder. The first step after a reset counts as a rise if it beats the
    best point it started from (AutoAttack's code: the discarded iterate).
  * The random start is uniform in the ball as in `pgd`; AutoAttack rescales a uniform draw so
    that its largest coordinate is eps.
  * Targeted DLR picks its target among the classes other than y (`target_rank` 2: the highest
    of them), from the clean logits averaged over the EOT draws; AutoAttack ranks all classes on
    one draw (the same when the clean point is classified correctly, as it attacks only those)
    and loops over 9 targets, which here is 9 calls.

Keys (documented so that results can be reproduced outside this module):
  k_start, k_target, k_steps = split(key, 3)
  random start:       uniform(k_start, x.shape, -eps, eps), projected
  model keys at x_t:  split(fold_in(k_steps, t), eot_samples)   (t = 0 .. steps)
  automatic target:   logits at x averaged over split(k_target, eot_samples)
"""

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.attacks.arguments import check_count, check_fraction, check_inputs, check_nonneg
from menet_jax.attacks.linf import project_linf, start_point
from menet_jax.attacks.logits_fn import LogitsFn, merge_fn, split_fn
from menet_jax.attacks.losses import cross_entropy, dlr_loss, dlr_targeted_loss

APGD_LOSSES = ("ce", "dlr", "dlr_targeted")
RETURN_BEST = ("loss", "adversarial", "single_draw")


def _checkpoint_hundredths() -> tuple[int, ...]:
    """p_1, p_2, ... <= 1 of the paper's recurrence, in hundredths (exact integers)."""
    p = [0, 22]
    while (nxt := p[-1] + max(p[-1] - p[-2] - 3, 6)) <= 100:
        p.append(nxt)
    return tuple(p[1:])  # (22, 41, 57, 70, 80, 87, 93, 99)


_P = _checkpoint_hundredths()


def checkpoints(steps: Any) -> Any:
    """The iterations w_j = ceil(p_j * steps), j >= 1, after which APGD checks its step size.

    Ascending; small `steps` repeat some (a repeat is one check). Works on a Python or numpy int
    (returns a numpy array) and on a traced integer inside jit (returns a jax array).
    """
    xp = jnp if isinstance(steps, jax.Array) else np
    return (xp.asarray(_P, xp.int32) * steps + 99) // 100


class _Result(NamedTuple):
    best: jax.Array  # [B, H, W, C], the iterate of highest mean loss
    best_loss: jax.Array  # [B]
    adversarial: jax.Array  # [B, H, W, C], the last fooling iterate, else `best` (or x)
    fooled: jax.Array  # [B] bool, whether any iterate fooled (majority, or the last draw)
    step_size: jax.Array  # [B], eta after the last checkpoint


class _Carry(NamedTuple):
    x: jax.Array  # current iterate
    x_prev: jax.Array
    grad: jax.Array  # mean gradient at x
    loss: jax.Array  # mean loss at x
    best: jax.Array
    best_grad: jax.Array
    best_loss: jax.Array
    adv: jax.Array
    fooled: jax.Array
    eta: jax.Array
    increases: jax.Array  # steps since the last checkpoint that raised the loss
    last_checkpoint: jax.Array  # scalar: the iteration of the last checkpoint
    halved_at_last: jax.Array
    best_loss_at_last: jax.Array


def _per_image(flag: jax.Array) -> jax.Array:
    return flag[:, None, None, None]


def _eot_eval(draw, z, step_key, eot_samples):
    """Mean loss [B], mean gradient, the number of misclassifying draws [B] at z and whether the
    last draw misclassified [B] (AutoAttack's prediction: its last EOT draw's).

    `draw(z, key)` returns one draw's (loss [B], misclassified [B]); the keys are split from
    `step_key` as the module docstring says.
    """
    keys = jax.random.split(step_key, eot_samples)

    def one(k):
        # Examples are independent, so the gradient of the sum is the per-example gradient.
        def total(zz):
            per_example, wrong = draw(zz, k)
            return jnp.sum(per_example), (per_example, wrong)

        (_, (per_example, wrong)), grad = jax.value_and_grad(total, has_aux=True)(z)
        return per_example, grad, wrong.astype(jnp.int32)

    if eot_samples == 1:
        loss, grad, wrong = one(keys[0])
        return loss, grad, wrong, wrong > 0

    # A loop, not a vmap, so memory does not grow with eot_samples.
    def body(i, acc):
        sums, _ = acc
        now = one(keys[i])
        return jax.tree.map(jnp.add, sums, now), now[2] > 0

    b = z.shape[0]
    zeros = (jnp.zeros((b,), jnp.float32), jnp.zeros_like(z), jnp.zeros((b,), jnp.int32))
    (loss, grad, wrong), last = jax.lax.fori_loop(
        0, eot_samples, body, (zeros, jnp.zeros((b,), bool))
    )
    return loss / eot_samples, grad / eot_samples, wrong, last


def _step(t, c: _Carry, *, x, eps, rho, momentum, evaluate, majority, marks) -> _Carry:
    """Iteration t: the momentum step to x_t (x_0 at t = 0), its bookkeeping, a checkpoint."""
    a = jnp.where(t == 1, 1.0, momentum)
    z = project_linf(c.x + _per_image(c.eta) * jnp.sign(c.grad), x, eps)
    x_new = project_linf(c.x + a * (z - c.x) + (1 - a) * (c.x - c.x_prev), x, eps)
    loss, grad, wrong, last_wrong = evaluate(x_new, t)

    better = loss > c.best_loss
    best = jnp.where(_per_image(better), x_new, c.best)
    best_grad = jnp.where(_per_image(better), grad, c.best_grad)
    best_loss = jnp.where(better, loss, c.best_loss)
    fooled_now = majority(wrong, last_wrong)
    adv = jnp.where(_per_image(fooled_now), x_new, c.adv)
    increases = c.increases + (loss > c.loss).astype(jnp.int32)

    at_checkpoint = jnp.any(marks == t)
    window = (t - c.last_checkpoint).astype(jnp.float32)
    stalled = increases.astype(jnp.float32) < rho * window  # condition 1
    no_progress = ~c.halved_at_last & (best_loss <= c.best_loss_at_last)  # condition 2
    halve = at_checkpoint & (stalled | no_progress)
    return _Carry(
        x=jnp.where(_per_image(halve), best, x_new),
        x_prev=c.x,
        grad=jnp.where(_per_image(halve), best_grad, grad),
        loss=jnp.where(halve, best_loss, loss),
        best=best,
        best_grad=best_grad,
        best_loss=best_loss,
        adv=adv,
        fooled=c.fooled | fooled_now,
        eta=jnp.where(halve, 0.5 * c.eta, c.eta),
        increases=jnp.where(at_checkpoint, 0, increases),
        last_checkpoint=jnp.where(at_checkpoint, t, c.last_checkpoint),
        halved_at_last=jnp.where(at_checkpoint, halve, c.halved_at_last),
        best_loss_at_last=jnp.where(at_checkpoint, best_loss, c.best_loss_at_last),
    )


def _auto_target(logits_fn, x, y, key, eot_samples, target_rank):
    """The class ranked `target_rank - 1` among those != y by the mean clean logits, [B]."""
    keys = jax.random.split(key, eot_samples)
    total = jax.lax.fori_loop(
        1,
        eot_samples,
        lambda i, acc: acc + logits_fn(x, keys[i]).astype(jnp.float32),
        logits_fn(x, keys[0]).astype(jnp.float32),
    )
    mean = total / eot_samples
    others = jnp.where(jax.nn.one_hot(y, mean.shape[-1], dtype=bool), -jnp.inf, mean)
    order = jnp.argsort(-others, axis=-1, stable=True)
    return jnp.take(order, target_rank - 2, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("fn_static", "loss", "eot_samples", "random_start", "last_draw"))
def _apgd(
    fn_dynamic,
    x,
    y,
    key,
    target,
    eps,
    steps,
    rho,
    momentum,
    target_rank,
    *,
    fn_static,
    loss,
    eot_samples,
    random_start,
    last_draw=False,
):
    logits_fn = merge_fn(fn_dynamic, fn_static)
    k_start, k_target, k_steps = jax.random.split(key, 3)
    if loss == "dlr_targeted" and target is None:
        target = _auto_target(logits_fn, x, y, k_target, eot_samples, target_rank)

    def draw(z, k):
        logits = logits_fn(z, k)
        if loss == "ce":
            per_example = cross_entropy(logits, y)
        elif loss == "dlr":
            per_example = dlr_loss(logits, y)
        else:
            per_example = dlr_targeted_loss(logits, y, target)
        return per_example, jnp.argmax(logits, axis=-1) != y

    def evaluate(z, t):
        return _eot_eval(draw, z, jax.random.fold_in(k_steps, t), eot_samples)

    def majority(wrong, last_wrong):
        # last_draw: AutoAttack's x_best_adv, an iterate its step's last draw misclassified.
        return last_wrong if last_draw else 2 * wrong > eot_samples

    # Iteration 0 evaluates x_0: with a zero gradient and x_prev = x_0 its step stays at x_0,
    # a loss of +inf counts no increase, and the best loss of -inf takes x_0 as the best point.
    x0 = start_point(k_start, x, eps, random_start=random_start)
    zeros = jnp.zeros_like(x0)
    init = _Carry(
        x=x0,
        x_prev=x0,
        grad=zeros,
        loss=jnp.full(y.shape, jnp.inf, jnp.float32),
        best=x0,
        best_grad=zeros,
        best_loss=jnp.full(y.shape, -jnp.inf, jnp.float32),
        adv=x0,
        fooled=jnp.zeros(y.shape, bool),
        eta=jnp.full(y.shape, 2.0 * eps, jnp.float32),
        increases=jnp.zeros(y.shape, jnp.int32),
        last_checkpoint=jnp.int32(0),
        # As AutoAttack starts: condition 2 cannot fire at the first checkpoint.
        halved_at_last=jnp.ones(y.shape, bool),
        best_loss_at_last=jnp.full(y.shape, -jnp.inf, jnp.float32),
    )
    step = partial(
        _step,
        x=x,
        eps=eps,
        rho=rho,
        momentum=momentum,
        evaluate=evaluate,
        majority=majority,
        marks=checkpoints(steps),
    )
    c = jax.lax.fori_loop(0, steps + 1, step, init)
    return _Result(
        best=c.best,
        best_loss=c.best_loss,
        adversarial=jnp.where(_per_image(c.fooled), c.adv, x if last_draw else c.best),
        fooled=c.fooled,
        step_size=c.eta,
    )


@partial(jax.jit, static_argnames=("fn_static",))
def _logits(fn_dynamic, x, key, *, fn_static):
    """The logits at x; its `eval_shape` gives the class count, traced once per shape, as jit."""
    return merge_fn(fn_dynamic, fn_static)(x, key)


def _check_target(target, y, num_classes):
    """The explicit target classes as int32 [B]; raises ValueError on a bad one."""
    target = jnp.asarray(target)
    if target.shape != y.shape or not jnp.issubdtype(target.dtype, jnp.integer):
        raise ValueError(
            f"target must be integer classes of shape [{y.shape[0]}], got shape "
            f"{tuple(target.shape)} and dtype {target.dtype}."
        )
    if not isinstance(target, jax.core.Tracer) and not isinstance(y, jax.core.Tracer):
        t, labels = np.asarray(target), np.asarray(y)
        if np.any((t < 0) | (t >= num_classes)) or np.any(t == labels):
            raise ValueError(
                f"target must hold classes in [0, {num_classes}) other than y, got {t.tolist()}."
            )
    return target.astype(jnp.int32)


def _apgd_result(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    steps: int = 100,
    loss: str = "ce",
    eot_samples: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    target: jax.Array | None = None,
    target_rank: int = 2,
    random_start: bool = True,
    last_draw: bool = False,
) -> _Result:
    """`apgd`'s checks and jitted run, returning its whole result (tests read the step size).

    `last_draw`: an iterate fools when its step's last EOT draw misclassifies it (AutoAttack),
    not a majority of the draws; the adversarial image is x where none did."""
    x, y = check_inputs(x, y, key)
    check_nonneg("eps", eps)
    steps = check_count("steps", steps, 1)
    eot_samples = check_count("eot_samples", eot_samples, 1)
    check_fraction("rho", rho)
    check_fraction("momentum", momentum)
    if loss not in APGD_LOSSES:
        raise ValueError(f"loss must be one of {APGD_LOSSES}, got {loss!r}.")
    dynamic, static = split_fn(logits_fn)
    if loss == "dlr_targeted":
        num_classes = _logits.eval_shape(dynamic, x, key, fn_static=static).shape[-1]
        if num_classes < 4:
            raise ValueError(
                f"loss 'dlr_targeted' needs at least 4 classes, got logits with {num_classes}."
            )
        target_rank = check_count("target_rank", target_rank, 2)
        if target_rank > num_classes:
            raise ValueError(
                f"target_rank must be in [2, {num_classes}] (the number of classes), "
                f"got {target_rank}."
            )
        if target is not None:
            target = _check_target(target, y, num_classes)
    elif target is not None:
        raise ValueError(f"target is only used by loss='dlr_targeted', got loss={loss!r}.")
    return _apgd(
        dynamic,
        x,
        y,
        key,
        target,
        jnp.float32(eps),
        jnp.int32(steps),
        jnp.float32(rho),
        jnp.float32(momentum),
        jnp.int32(target_rank),
        fn_static=static,
        loss=loss,
        eot_samples=eot_samples,
        random_start=bool(random_start),
        last_draw=bool(last_draw),
    )


def apgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    steps: int = 100,
    loss: str = "ce",
    eot_samples: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    target: jax.Array | None = None,
    target_rank: int = 2,
    random_start: bool = True,
    return_best: str = "loss",
) -> jax.Array:
    """L-inf APGD (Croce and Hein 2020), one jitted computation; see the module docstring.

    The step size starts at 2 * eps and is halved per example at checkpoints where progress
    stalls; steps use momentum. The step loop is a `lax` loop: `steps`, `eps`, `rho`,
    `momentum` and `target_rank` are traced (changing them does not retrace), `loss`,
    `eot_samples` and `random_start` are static.

    Args:
      logits_fn: pure, jittable `(x, key) -> logits [B, K]`; the key feeds the model's own
        randomness (ME-Net's masks), deterministic models ignore it. See `pgd` for how it is
        passed to jit (a pytree callable's arrays are traced arguments).
      x: images [B, H, W, C] in [0, 1].
      y: integer labels [B].
      key: typed key (`jax.random.key`); see the module docstring for how it is split.
      eps: L-inf radius >= 0.
      steps: iterations N (>= 1); the loss and gradient are evaluated N + 1 times (x_0 .. x_N),
        each time at `eot_samples` model keys.
      loss: "ce" (cross-entropy, APGD-CE), "dlr" (difference of logits ratio, APGD-DLR; at
        least 3 classes) or "dlr_targeted" (targeted DLR, APGD-T; at least 4 classes).
      eot_samples: model keys per step (>= 1); the loss and its gradient are their mean.
        AutoAttack's version "rand" uses 20.
      rho: condition 1's threshold, in [0, 1].
      momentum: the weight a of the new step against the previous one, in [0, 1].
      target: for "dlr_targeted", target classes [B] (each other than y), or None to take per
        example the class ranked `target_rank - 1` among the classes other than y by the clean
        logits (averaged over `eot_samples` keys).
      target_rank: 2 (the default) for the highest non-true class, 3 for the next one, ...:
        AutoAttack's APGD-T runs ranks 2 .. 10.
      random_start: start from a uniform point of the eps-ball (AutoAttack does).
      return_best: "loss" (the default): per example the iterate of highest mean loss;
        "adversarial": the last iterate misclassified on a strict majority of its step's
        `eot_samples` draws (with 1 draw: misclassified by it), else the one of highest loss;
        "single_draw" (AutoAttack's `x_best_adv`): the last iterate misclassified by the last
        of its step's draws, else x itself.

    Returns:
      Adversarial images, float32 [B, H, W, C], within `eps` of `x` (L-inf) and in [0, 1].
    """
    if return_best not in RETURN_BEST:
        raise ValueError(f"return_best must be one of {RETURN_BEST}, got {return_best!r}.")
    result = _apgd_result(
        logits_fn,
        x,
        y,
        key,
        eps=eps,
        steps=steps,
        loss=loss,
        eot_samples=eot_samples,
        rho=rho,
        momentum=momentum,
        target=target,
        target_rank=target_rank,
        random_start=random_start,
        last_draw=return_best == "single_draw",
    )
    return result.best if return_best == "loss" else result.adversarial
