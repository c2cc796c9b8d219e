"""Boundary attack: decision-based, uses only the predicted label (Brendel et al., ICLR 2018).

Brendel, Rauber and Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against
Black-Box Machine Learning Models", ICLR 2018. L2 geometry: from an adversarial start, each step
proposes an orthogonal step on the sphere around x and then a step towards x, and keeps a
proposal only if it is still adversarial and closer; the step sizes adapt from success
statistics. Batched over examples in one jitted `lax` loop. Two generations of foolbox's
`BoundaryAttack`, chosen by `proposals`:

* `proposals=1`: foolbox 3's walk, one proposal per step; every `stats_every` steps the
  spherical point is judged too and the records are unconditional (spherical success > 0.5 or
  < 0.2 scales both sizes, step success > 0.25 or < 0.1 the source step).
* `proposals=k > 1`: foolbox 1.6.2's (the version the ME-Net authors used; 1.8 and 2.0 keep its
  rules) with `max_directions=k`, the k candidates of a step in one batched model call, i.e.
  foolbox's `batch_size = max_directions`: the first of them that is adversarial (and closer) is
  taken. On statistics steps all k spherical points are judged too, a candidate counts only if
  its spherical point is adversarial, and the step record is the success of those candidates
  (conditional); both rates adapt at > 0.5 and < 0.2. foolbox 1.6.2's defaults:
  `max_directions=25`, `spherical_step=source_step=1e-2`, `step_adaptation=1.5`, records of
  100 (spherical) and 30 (step), statistics every 10th step, `iterations=5000` (the authors
  passed 1000). Not followed: once the source step falls below 1e-7, foolbox 1.x resets both
  sizes to 1e-2 once and judges spherical points on every step while it confirms convergence;
  here such an example stops, as in foolbox 3.

Not projected into any eps-ball: the caller counts a success only when the returned image is
misclassified and `linf_distance(x, x_adv) <= eps`. The walk minimises the L2 distance; the image
returned is, per example, the adversarial point of smallest L-inf distance visited (the start
and every accepted step).

Keys: k_init, k_search, k_walk = split(key, 3); noise try i uses fold_in(k_init, i + 1)
(and fold_in(k_init, 0) checks x itself); binary-search step j uses fold_in(k_search, j). Walk
step t: k_t = fold_in(k_walk, t); proposal i draws k_eta, k_cand, k_sph = split(k_i, 3) with
k_0 = k_t and k_i = fold_in(k_t, i) for i >= 1 (so proposal 0 is the single-proposal walk's);
k_eta draws its direction, k_cand and k_sph are the model keys judging its candidate and its
spherical point.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from menet_jax.attacks.arguments import check_count, check_inputs, check_nonneg
from menet_jax.attacks.linf import linf_distance
from menet_jax.attacks.logits_fn import LogitsFn, merge_fn, split_fn

__all__ = ["boundary", "linf_distance"]


class _StepSizes(NamedTuple):
    """Per-example step sizes [B] and the success records [B, window] they adapt from."""

    spherical: jax.Array  # orthogonal step, relative to the distance to x
    source: jax.Array  # step towards x, relative to the distance to x
    spherical_record: jax.Array  # ring buffer: was the spherical proposal adversarial (1/0)
    spherical_count: jax.Array  # records since the last change of the sizes, [B] int32
    step_record: jax.Array  # ring buffer: was the full proposal adversarial (1/0)
    step_count: jax.Array


class _Walk(NamedTuple):
    """The walk's carry: flat images [B, D], distances [B] and the step sizes."""

    best: jax.Array  # the adversarial closest to x in L2: where the walk stands
    best_linf: jax.Array  # the adversarial of smallest L-inf distance visited: the result
    best_linf_d: jax.Array  # its L-inf distance to x
    sizes: _StepSizes


def _norm(v):
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def _push(buffer, count, values, valid):
    """Appends the `valid` entries of `values` [B, k], in order, to per-example ring buffers.

    `buffer` [B, W] holds `count` [B] entries; an example adding more than W keeps the last W.
    Returns the new (buffer, count).
    """
    window, k = buffer.shape[1], values.shape[1]
    slot = (count[:, None] + jnp.cumsum(valid, axis=1) - 1) % window  # [B, k]
    hits = valid[:, :, None] & (slot[:, :, None] == jnp.arange(window))  # [B, k, W]
    last = jnp.max(jnp.where(hits, jnp.arange(k)[None, :, None], -1), axis=1)  # [B, W]
    written = jnp.take_along_axis(values, jnp.maximum(last, 0), axis=1)
    return jnp.where(last >= 0, written, buffer), count + jnp.sum(valid, axis=1, dtype=count.dtype)


def _adversarial_fn(logits_fn, shape, y):
    """`is_adv(flat_z [B, D], key) -> [B] bool`: is `logits_fn`'s argmax not the label."""

    def is_adv(flat_z, k):
        return jnp.argmax(logits_fn(flat_z.reshape(shape), k), axis=-1) != y

    return is_adv


def _noise_start(is_adv, flat_x, k_init, init_tries):
    """Finds, per example, an adversarial start: x itself, else uniform noise.

    Returns:
      (clean_adv, found, noise): whether x itself is misclassified [B]; whether a start was
      found, x or noise [B]; the first misclassified of up to `init_tries` uniform-noise
      images [B, D] (zeros where none was tried or found).
    """
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
    return clean_adv, found, noise


def _blend_towards_x(is_adv, flat_x, noise, clean_adv, found, k_search, init_search_steps):
    """The walk's start: the adversarial blend (1 - a) x + a noise of smallest a found.

    A binary search of `init_search_steps` steps on a; x itself where x is already adversarial
    or no adversarial start was found.
    """

    def search_body(j, carry):
        lo, hi = carry
        mid = (lo + hi) / 2
        adv = is_adv(
            (1 - mid[:, None]) * flat_x + mid[:, None] * noise, jax.random.fold_in(k_search, j)
        )
        return jnp.where(adv, lo, mid), jnp.where(adv, mid, hi)

    ones = jnp.ones((flat_x.shape[0],), jnp.float32)
    _, alpha = jax.lax.fori_loop(0, init_search_steps, search_body, (0 * ones, ones))
    alpha = jnp.where(clean_adv, 0.0, alpha)
    return jnp.where(found[:, None], (1 - alpha[:, None]) * flat_x + alpha[:, None] * noise, flat_x)


def _propose(flat_x, best, spherical_step, source_step, key):
    """foolbox 3's draw_proposals, batched: an orthogonal step, then a step towards x.

    The first is a random step orthogonal to x - best on the sphere around x, the second moves
    towards x; both are relative to the current L2 distance.

    Returns:
      (dist, spherical, candidate): the distance |x - best| [B], the point after the
      orthogonal step and the proposal after both steps, [B, D], clipped to [0, 1].
    """
    diff = flat_x - best
    dist = _norm(diff)
    safe_dist = jnp.where(dist > 0, dist, 1.0)
    direction = diff / safe_dist[:, None]

    eta = jax.random.normal(key, flat_x.shape, jnp.float32)
    eta = eta - jnp.sum(eta * direction, axis=-1, keepdims=True) * direction
    eta_norm = jnp.maximum(_norm(eta), 1e-12)
    eta = eta * (spherical_step * dist / eta_norm)[:, None]
    spherical = flat_x + (eta - diff) / jnp.sqrt(spherical_step**2 + 1)[:, None]
    spherical = jnp.clip(spherical, 0.0, 1.0)
    towards = flat_x - spherical
    towards_norm = _norm(towards)
    length = jnp.maximum(source_step * dist + towards_norm - dist, 0.0)
    length = length / jnp.maximum(towards_norm, 1e-12)
    candidate = jnp.clip(spherical + length[:, None] * towards, 0.0, 1.0)
    return dist, spherical, candidate


def _rate_rule(record, count, window, high, low, step_adaptation):
    """foolbox's rule on one success record: the factor for a step size, and the new count.

    Once `window` records exist, a success rate above `high` multiplies the step size by
    `step_adaptation`, below `low` divides it, and a change restarts the count. Returns
    (factor [B], count [B]).
    """
    full = count >= window
    prob = jnp.mean(record, axis=-1)
    up, down = full & (prob > high), full & (prob < low)
    factor = jnp.where(up, step_adaptation, jnp.where(down, 1 / step_adaptation, 1.0))
    return factor, jnp.where(up | down, 0, count)


def _adapt(sizes, spherical_adv, step_adv, step_counted, step_adaptation, step_rates, windows):
    """Records one statistics step's successes and adapts the step sizes.

    `spherical_adv`, `step_adv` and `step_counted` are [k, B]: whether each proposal's spherical
    point and candidate were adversarial, and which candidates enter the step record. The
    spherical rate (> 0.5 or < 0.2) scales both sizes, the step rate (above / below
    `step_rates`) the source step only.
    """
    sph, src, sph_buf, sph_n, stp_buf, stp_n = sizes
    spherical_window, step_window = windows
    sph_buf, sph_n = _push(
        sph_buf, sph_n, spherical_adv.T.astype(jnp.float32), jnp.ones_like(spherical_adv.T)
    )
    stp_buf, stp_n = _push(stp_buf, stp_n, step_adv.T.astype(jnp.float32), step_counted.T)
    factor, sph_n = _rate_rule(sph_buf, sph_n, spherical_window, 0.5, 0.2, step_adaptation)
    sph, src = sph * factor, src * factor
    factor, stp_n = _rate_rule(stp_buf, stp_n, step_window, *step_rates, step_adaptation)
    src = src * factor
    return _StepSizes(sph, src, sph_buf, sph_n, stp_buf, stp_n)


def _initial_walk(start, flat_x, spherical_step, source_step, spherical_window, step_window):
    """The walk's carry before step 0: standing at `start`, the initial sizes, empty records."""
    batch = flat_x.shape[0]
    ones = jnp.ones((batch,), jnp.float32)
    zeros_n = jnp.zeros((batch,), jnp.int32)
    sizes = _StepSizes(
        spherical_step * ones,
        source_step * ones,
        jnp.zeros((batch, spherical_window), jnp.float32),
        zeros_n,
        jnp.zeros((batch, step_window), jnp.float32),
        zeros_n,
    )
    return _Walk(start, start, jnp.max(jnp.abs(start - flat_x), axis=-1), sizes)


def _proposal_keys(k_step, proposals):
    """[proposals, 3] keys (k_eta, k_cand, k_sph): proposal 0 splits `k_step` itself."""
    first = jax.random.split(k_step, 3)[None]
    if proposals == 1:
        return first
    others = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(k_step, i), 3))(
        jnp.arange(1, proposals)
    )
    return jnp.concatenate([first, others])


def _take_first(candidate, eligible):
    """Per example, the first eligible of k candidates [k, B, D]: (any eligible [B], it [B, D])."""
    first = jnp.argmax(eligible, axis=0)
    chosen = jnp.take_along_axis(candidate, first[None, :, None], axis=0)[0]
    return jnp.any(eligible, axis=0), chosen


def _walk_step(
    t, walk, *, is_adv, flat_x, found, k_walk, step_adaptation, stats_every, windows, proposals
):
    """Walk step t: k proposals, and a move to the first that is adversarial and closer in L2.

    Also tracks the adversarial of smallest L-inf distance, and every `stats_every` steps
    judges the spherical points (one more model call) and adapts the step sizes. With several
    proposals (foolbox 1.x) a candidate counts on those steps only if its spherical point is
    adversarial, and the step record holds just those candidates.
    """
    keys = _proposal_keys(jax.random.fold_in(k_walk, t), proposals)
    sizes = walk.sizes
    propose = jax.vmap(_propose, in_axes=(None, None, None, None, 0))
    dist, spherical, candidate = propose(
        flat_x, walk.best, sizes.spherical, sizes.source, keys[:, 0]
    )  # [k, B], [k, B, D], [k, B, D]
    dist = dist[0]
    # Examples without an adversarial start, already at x, or converged (source step below
    # foolbox's convergence threshold, 1e-7) stay where they are.
    active = found & (dist > 0) & (sizes.source >= 1e-7)

    judge = jax.vmap(is_adv)  # the k proposals in one batched model call
    cand_adv = judge(candidate, keys[:, 1])
    stats_step = (t + 1) % stats_every == 0
    gated = proposals > 1
    spherical_adv = jax.lax.cond(
        stats_step,
        lambda: judge(spherical, keys[:, 2]),
        lambda: jnp.ones_like(cand_adv),
    )
    eligible = active & cand_adv & (_norm(flat_x - candidate) < dist)
    if gated:
        eligible = eligible & spherical_adv
    accept, chosen = _take_first(candidate, eligible)

    best = jnp.where(accept[:, None], chosen, walk.best)
    chosen_linf = jnp.max(jnp.abs(chosen - flat_x), axis=-1)
    smaller = accept & (chosen_linf < walk.best_linf_d)
    best_linf = jnp.where(smaller[:, None], chosen, walk.best_linf)
    best_linf_d = jnp.where(smaller, chosen_linf, walk.best_linf_d)

    # foolbox 1.x conditions the step record on the spherical success (rates 0.5 / 0.2);
    # foolbox 3 records every candidate (rates 0.25 / 0.1).
    step_counted = spherical_adv if gated else jnp.ones_like(cand_adv)
    step_rates = (0.5, 0.2) if gated else (0.25, 0.1)

    def adapt(sizes):
        return _adapt(
            sizes, spherical_adv, cand_adv, step_counted, step_adaptation, step_rates, windows
        )

    sizes = jax.lax.cond(stats_step, adapt, lambda s: s, sizes)
    return _Walk(best, best_linf, best_linf_d, sizes)


@partial(jax.jit, static_argnames=("fn_static", "proposals", "spherical_window", "step_window"))
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
    proposals,
    spherical_window,
    step_window,
):
    shape = x.shape
    flat_x = x.reshape(shape[0], -1)
    is_adv = _adversarial_fn(merge_fn(fn_dynamic, fn_static), shape, y)
    k_init, k_search, k_walk = jax.random.split(key, 3)
    clean_adv, found, noise = _noise_start(is_adv, flat_x, k_init, init_tries)
    start = _blend_towards_x(is_adv, flat_x, noise, clean_adv, found, k_search, init_search_steps)
    step = partial(
        _walk_step,
        is_adv=is_adv,
        flat_x=flat_x,
        found=found,
        k_walk=k_walk,
        step_adaptation=step_adaptation,
        stats_every=stats_every,
        windows=(spherical_window, step_window),
        proposals=proposals,
    )
    init = _initial_walk(start, flat_x, spherical_step, source_step, spherical_window, step_window)
    walk = jax.lax.fori_loop(0, steps, step, init)
    return jnp.where(found[:, None], walk.best_linf, flat_x).reshape(shape)


def boundary(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    steps: int = 1000,
    proposals: int = 25,
    spherical_step: float = 0.01,
    source_step: float = 0.01,
    step_adaptation: float = 1.5,
    stats_every: int = 10,
    spherical_window: int | None = None,
    step_window: int | None = None,
    init_tries: int = 100,
    init_search_steps: int = 20,
) -> jax.Array:
    """Decision-based Boundary Attack, batched, one jitted call; not bounded by any eps.

    Starts from x if `logits_fn` already misclassifies it, else from the first of `init_tries`
    uniform-noise images that is misclassified, blended towards x by a binary search
    (`init_search_steps`). Then each of `steps` steps draws `proposals` candidates, each an
    orthogonal (spherical) step of relative size `spherical_step` followed by a step towards x
    of relative size `source_step`, and moves to the first one that is misclassified and closer
    in L2. Every `stats_every` steps it also judges the spherical points and, once
    `spherical_window` / `step_window` records exist, multiplies or divides the step sizes by
    `step_adaptation`.

    `proposals=1` is foolbox 3's walk (and this function's behaviour before `proposals`
    existed, bit for bit); `proposals > 1` is foolbox 1.6.2's with `max_directions=proposals`
    (the authors' version; its default 25 is the default here). The module docstring gives
    both rules.

    Args:
      logits_fn: pure, jittable `(x, key) -> logits`; only its argmax is used. See `pgd` for
        how it is passed to jit. Every call gets a fresh key.
      x: images [B, H, W, C] in [0, 1].
      y: integer labels [B].
      key: typed key (`jax.random.key`); see the module docstring for how it is split.
      steps: walk steps (>= 0); each makes one model call on `proposals` image batches, and
        every `stats_every`-th step a second one for the spherical points.
      proposals: candidates per step (>= 1; static), evaluated in one vmapped model call.
      spherical_step, source_step: initial relative step sizes (> 0).
      step_adaptation: step-size factor (> 1).
      stats_every: steps between statistics updates (>= 1).
      spherical_window, step_window: records needed before adapting (>= 1; static). None:
        foolbox 1.6.2's 100 and 30 with several proposals (a statistics step adds up to
        `proposals` records); 10 and 10 with one (foolbox 3 keeps 100 and 30, which one record
        per 10 steps would fill only after 1000 steps).
      init_tries: uniform-noise starts tried at most (>= 1).
      init_search_steps: binary-search steps on the blend towards x (>= 0).

    Returns:
      Images float32 [B, H, W, C] in [0, 1]: per example the adversarial of smallest L-inf
      distance found, or x itself where no adversarial start was found (or x was already
      misclassified). Use `linf_distance(x, x_adv)` and a fresh prediction to score them.
    """
    x, y = check_inputs(x, y, key)
    steps = check_count("steps", steps, 0)
    proposals = check_count("proposals", proposals, 1)
    stats_every = check_count("stats_every", stats_every, 1)
    several = proposals > 1
    if spherical_window is None:
        spherical_window = 100 if several else 10
    if step_window is None:
        step_window = 30 if several else 10
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
        proposals=proposals,
        spherical_window=spherical_window,
        step_window=step_window,
    )
