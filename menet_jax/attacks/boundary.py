"""Boundary attack: decision-based, uses only the predicted label (Brendel et al., ICLR 2018).

Brendel, Rauber and Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against
Black-Box Machine Learning Models", ICLR 2018. The walk follows foolbox 3's `BoundaryAttack`
(L2 geometry: an orthogonal step on the sphere around x, then a step towards x, each accepted
only if still adversarial and closer; step sizes adapted from success statistics), batched over
examples in one jitted `lax` loop.

Not projected into any eps-ball: the caller counts a success only when the returned image is
misclassified and `linf_distance(x, x_adv) <= eps`. The walk minimises the L2 distance; the image
returned is, per example, the adversarial point of smallest L-inf distance visited (the start
and every accepted step).

Keys: k_init, k_search, k_walk = split(key, 3); noise try i uses fold_in(k_init, i + 1)
(and fold_in(k_init, 0) checks x itself); binary-search step j uses fold_in(k_search, j); walk
step t uses fold_in(k_walk, t).
"""

from functools import partial

import jax
import jax.numpy as jnp

from menet_jax.attacks.checks import check_count, check_inputs, check_nonneg
from menet_jax.attacks.linf import linf_distance
from menet_jax.attacks.logits_fn import LogitsFn, merge_fn, split_fn

__all__ = ["boundary", "linf_distance"]


def _norm(v):
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def _push(buffer, count, value):
    """Appends `value` [B] to per-example ring buffers [B, W] holding `count` [B] entries."""
    slot = jnp.arange(buffer.shape[1])[None, :] == (count % buffer.shape[1])[:, None]
    return jnp.where(slot, value[:, None], buffer), count + 1


@partial(jax.jit, static_argnames=("fn_static", "spherical_window", "step_window"))
def _boundary(
    fn_dynamic,
    x,
    y,
    key,
    steps,
    spherical_step,
    source_step,
    step_adaptation,
    stats_every,
    init_tries,
    init_search_steps,
    *,
    fn_static,
    spherical_window,
    step_window,
):
    logits_fn = merge_fn(fn_dynamic, fn_static)
    shape = x.shape
    batch = shape[0]
    flat_x = x.reshape(batch, -1)

    def is_adv(flat_z, k):
        return jnp.argmax(logits_fn(flat_z.reshape(shape), k), axis=-1) != y

    k_init, k_search, k_walk = jax.random.split(key, 3)

    # --- start: x itself if already misclassified, else uniform noise, then a binary search
    # on the blend (1 - a) x + a noise for the smallest adversarial a.
    clean_adv = is_adv(flat_x, jax.random.fold_in(k_init, 0))

    def noise_cond(carry):
        i, found, _ = carry
        return (i < init_tries) & ~jnp.all(found)

    def noise_body(carry):
        i, found, noise = carry
        k_noise, k_model = jax.random.split(jax.random.fold_in(k_init, i + 1))
        candidate = jax.random.uniform(k_noise, flat_x.shape, jnp.float32)
        new = is_adv(candidate, k_model) & ~found
        return i + 1, found | new, jnp.where(new[:, None], candidate, noise)

    _, found, noise = jax.lax.while_loop(
        noise_cond, noise_body, (jnp.int32(0), clean_adv, jnp.zeros_like(flat_x))
    )

    def search_body(j, carry):
        lo, hi = carry
        mid = (lo + hi) / 2
        adv = is_adv(
            (1 - mid[:, None]) * flat_x + mid[:, None] * noise, jax.random.fold_in(k_search, j)
        )
        return jnp.where(adv, lo, mid), jnp.where(adv, mid, hi)

    ones = jnp.ones((batch,), jnp.float32)
    _, alpha = jax.lax.fori_loop(0, init_search_steps, search_body, (0 * ones, ones))
    alpha = jnp.where(clean_adv, 0.0, alpha)
    start = jnp.where(
        found[:, None], (1 - alpha[:, None]) * flat_x + alpha[:, None] * noise, flat_x
    )

    # --- the walk (foolbox 3's draw_proposals and step-size adaptation).
    def walk(t, carry):
        best, best_linf, best_linf_d, sph, src, sph_buf, sph_n, stp_buf, stp_n = carry
        k_eta, k_cand, k_sph = jax.random.split(jax.random.fold_in(k_walk, t), 3)
        diff = flat_x - best
        dist = _norm(diff)
        active = found & (dist > 0) & (src >= 1e-7)
        safe_dist = jnp.where(dist > 0, dist, 1.0)
        direction = diff / safe_dist[:, None]

        eta = jax.random.normal(k_eta, flat_x.shape, jnp.float32)
        eta = eta - jnp.sum(eta * direction, axis=-1, keepdims=True) * direction
        eta_norm = jnp.maximum(_norm(eta), 1e-12)
        eta = eta * (sph * dist / eta_norm)[:, None]
        spherical = flat_x + (eta - diff) / jnp.sqrt(sph**2 + 1)[:, None]
        spherical = jnp.clip(spherical, 0.0, 1.0)
        towards = flat_x - spherical
        towards_norm = _norm(towards)
        length = jnp.maximum(src * dist + towards_norm - dist, 0.0)
        length = length / jnp.maximum(towards_norm, 1e-12)
        candidate = jnp.clip(spherical + length[:, None] * towards, 0.0, 1.0)

        cand_adv = is_adv(candidate, k_cand)
        accept = active & cand_adv & (_norm(flat_x - candidate) < dist)
        best = jnp.where(accept[:, None], candidate, best)
        cand_linf = jnp.max(jnp.abs(candidate - flat_x), axis=-1)
        smaller = accept & (cand_linf < best_linf_d)
        best_linf = jnp.where(smaller[:, None], candidate, best_linf)
        best_linf_d = jnp.where(smaller, cand_linf, best_linf_d)

        def adapt(state):
            sph, src, sph_buf, sph_n, stp_buf, stp_n = state
            sph_adv = is_adv(spherical, k_sph).astype(jnp.float32)
            sph_buf, sph_n = _push(sph_buf, sph_n, sph_adv)
            stp_buf, stp_n = _push(stp_buf, stp_n, cand_adv.astype(jnp.float32))
            full = sph_n >= spherical_window
            prob = jnp.mean(sph_buf, axis=-1)
            up, down = full & (prob > 0.5), full & (prob < 0.2)
            factor = jnp.where(up, step_adaptation, jnp.where(down, 1 / step_adaptation, 1.0))
            sph, src = sph * factor, src * factor
            sph_n = jnp.where(up | down, 0, sph_n)
            full = stp_n >= step_window
            prob = jnp.mean(stp_buf, axis=-1)
            up, down = full & (prob > 0.25), full & (prob < 0.1)
            src = src * jnp.where(up, step_adaptation, jnp.where(down, 1 / step_adaptation, 1.0))
            stp_n = jnp.where(up | down, 0, stp_n)
            return sph, src, sph_buf, sph_n, stp_buf, stp_n

        state = (sph, src, sph_buf, sph_n, stp_buf, stp_n)
        state = jax.lax.cond((t + 1) % stats_every == 0, adapt, lambda s: s, state)
        return (best, best_linf, best_linf_d, *state)

    zeros_n = jnp.zeros((batch,), jnp.int32)
    init = (
        start,
        start,
        jnp.max(jnp.abs(start - flat_x), axis=-1),
        spherical_step * ones,
        source_step * ones,
        jnp.zeros((batch, spherical_window), jnp.float32),
        zeros_n,
        jnp.zeros((batch, step_window), jnp.float32),
        zeros_n,
    )
    _, best_linf, *_ = jax.lax.fori_loop(0, steps, walk, init)
    return jnp.where(found[:, None], best_linf, flat_x).reshape(shape)


def boundary(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    steps: int = 1000,
    spherical_step: float = 0.01,
    source_step: float = 0.01,
    step_adaptation: float = 1.5,
    stats_every: int = 10,
    spherical_window: int = 10,
    step_window: int = 10,
    init_tries: int = 100,
    init_search_steps: int = 20,
) -> jax.Array:
    """Decision-based Boundary Attack, batched, one jitted call; not bounded by any eps.

    Starts from x if `logits_fn` already misclassifies it, else from the first of `init_tries`
    uniform-noise images that is misclassified, blended towards x by a binary search
    (`init_search_steps`). Then each of `steps` steps proposes an orthogonal (spherical) step of
    relative size `spherical_step` and a step towards x of relative size `source_step`, and keeps
    it if misclassified and closer in L2. Every `stats_every` steps it also judges the spherical
    proposal and, once `spherical_window` / `step_window` such records exist, multiplies or
    divides the step sizes by `step_adaptation` (foolbox 3's rule: spherical success > 0.5 or
    < 0.2 scales both, step success > 0.25 or < 0.1 scales `source_step`). foolbox 3 keeps 100
    and 30 records; the defaults here are shorter so the sizes adapt within 1000 steps.

    Args:
      logits_fn: pure, jittable `(x, key) -> logits`; only its argmax is used. See `pgd` for
        how it is passed to jit. Every call gets a fresh key.
      x: images [B, H, W, C] in [0, 1].
      y: integer labels [B].
      key: typed key (`jax.random.key`).
      steps: walk steps (>= 0), two model calls per `stats_every` steps, one otherwise.
      spherical_step, source_step: initial relative step sizes (> 0).
      step_adaptation: step-size factor (> 1).
      stats_every: steps between statistics updates (>= 1).
      spherical_window, step_window: records needed before adapting (>= 1; static).
      init_tries: uniform-noise starts tried at most (>= 1).
      init_search_steps: binary-search steps on the blend towards x (>= 0).

    Returns:
      Images float32 [B, H, W, C] in [0, 1]: per example the adversarial of smallest L-inf
      distance found, or x itself where no adversarial start was found (or x was already
      misclassified). Use `linf_distance(x, x_adv)` and a fresh prediction to score them.
    """
    x, y = check_inputs(x, y, key)
    steps = check_count("steps", steps, 0)
    stats_every = check_count("stats_every", stats_every, 1)
    spherical_window = check_count("spherical_window", spherical_window, 1)
    step_window = check_count("step_window", step_window, 1)
    init_tries = check_count("init_tries", init_tries, 1)
    init_search_steps = check_count("init_search_steps", init_search_steps, 0)
    for name, value in (("spherical_step", spherical_step), ("source_step", source_step)):
        check_nonneg(name, value)
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}.")
    if not step_adaptation > 1:
        raise ValueError(f"step_adaptation must be > 1, got {step_adaptation!r}.")
    dynamic, static = split_fn(logits_fn)
    return _boundary(
        dynamic,
        x,
        y,
        key,
        jnp.int32(steps),
        jnp.float32(spherical_step),
        jnp.float32(source_step),
        jnp.float32(step_adaptation),
        jnp.int32(stats_every),
        jnp.int32(init_tries),
        jnp.int32(init_search_steps),
        fn_static=static,
        spherical_window=spherical_window,
        step_window=step_window,
    )
