"""The defended classifier: ME-Net inference (fresh mask + matrix estimation) then the network.

Owns how an `me` config section becomes an image transform: the solver options each method
takes, the inference p (Algorithm 1: the mean of the training p's), BPDA (straight-through
gradients for white-box attacks) and majority vote over several masks (supplement J); see
docs/method.md §3.3 and §5.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from menet_jax import me
from menet_jax import mesh as mesh_lib

# The `me` keys that shape the reconstruction at inference and nothing else: a trained network
# can be evaluated with other values (`evaluation.evaluate`'s overrides). The mask schedule
# (p_start, p_end, num_masks, include_end) made S' and gives the default inference p and the
# vote's p's, so it stays the trained run's; me.inference_p and me.votes are the evaluation's own.
INFERENCE_KEYS = (
    "method", "channels", "rank_fraction", "threshold", "shrinkage", "max_iters", "tol",
    "accelerated", "mu",
)  # fmt: skip


def solver_options(me_config: ml_collections.ConfigDict) -> dict:
    """The keyword options `me.reconstruct` takes for the configured method."""
    method = me_config.method
    if method == "usvt":
        opts = {"rank_fraction": float(me_config.rank_fraction)}
        if me_config.threshold != "rank":
            opts["threshold"] = me_config.threshold
        return opts
    if method not in ("softimpute", "nucnorm"):
        return {}
    opts = {"max_iters": int(me_config.max_iters), "tol": float(me_config.tol)}
    if me_config.accelerated is not None:  # None: the solver's own default
        opts["accelerated"] = bool(me_config.accelerated)
    if method == "nucnorm":
        return {"mu": float(me_config.mu), **opts}
    if me_config.shrinkage is not None:
        opts["shrinkage"] = float(me_config.shrinkage)
    return opts


def training_ps(me_config: ml_collections.ConfigDict) -> np.ndarray:
    """The n observation probabilities of Algorithm 1 (one per mask); [1.0] without ME."""
    if me_config.method == "none":
        return np.ones((1,), np.float32)
    return me.p_schedule(
        me_config.p_start, me_config.p_end, me_config.num_masks, include_end=me_config.include_end
    )


def default_inference_p(me_config: ml_collections.ConfigDict) -> float:
    """The test-time p: `me.inference_p` if set, else the mean of the training p's."""
    if me_config.inference_p is not None:
        return float(me_config.inference_p)
    return float(np.mean(training_ps(me_config)))


def me_transform(me_config: ml_collections.ConfigDict, *, differentiable: bool = False, mesh=None):
    """Returns `transform(key, images, p) -> reconstructed images` for the configured ME.

    `differentiable=True` makes the solvers reverse-differentiable in the image for the drawn
    mask (exact gradients, docs/method.md §5.6); the values are the same.

    With a `mesh` of several devices (axis 'data'), a batch [B,H,W,C] whose B the device count
    divides is reconstructed per device (`jax.shard_map`): inside one jit over a sharded batch an
    iterative solver's `while_loop` would stop on a global condition, a cross-device reduction
    every iteration. The mask is still drawn over the whole batch, before the split, so every
    image gets the mask it gets on one device; the solvers treat each matrix on its own.
    """
    options = solver_options(me_config)
    if differentiable:
        options["differentiable"] = True
    method, channels = me_config.method, me_config.channels

    def solve(images, mask):
        return me.reconstruct(images, mask, method=method, channels=channels, **options)

    per_device = None if mesh is None or mesh.size == 1 else mesh_lib.per_device(solve, mesh, 2)

    def transform(key: jax.Array, images: jax.Array, p) -> jax.Array:
        if method == "none":
            return images
        shape = jnp.shape(images)
        if per_device is None or len(shape) != 4 or shape[0] % mesh.size:
            return me.mask_and_reconstruct(
                key, images, p, method=method, channels=channels, **options
            )
        return per_device(images, me.sample_mask(key, shape, p, channels=channels))

    return transform


def straight_through(x: jax.Array, y: jax.Array) -> jax.Array:
    """BPDA: the value of `y`, the gradient of the identity in `x`."""
    return x + jax.lax.stop_gradient(y - x)


MODES = ("menet", "network", "fixed_mask", "vote", "vote_soft")
GRADIENTS = ("bpda", "exact", "none")


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (jit of bound methods)
class DefendedClassifier:
    """A trained network behind ME-Net's preprocessing (immutable): the one source of logits.

    Attributes:
      graphdef: the network's NNX graph definition (in eval mode).
      state: the network's state (parameters and BatchNorm statistics).
      config: the run's full config.
      num_classes: number of classes.
      inference_p: the observation probability of ME-Net inference.
      step: the training step the state comes from.
      mesh: None, or a device mesh with axis 'data' over which batches are sharded: ME then
        runs per device (`me_transform`), with the masks and values of one device.

    Every way the project classifies an image is `apply(state, x, key, mode=...)`, a pure function
    of (network state, images [B,H,W,C] in [0,1], typed key) for one fixed set of options:

      mode="menet"       one fresh mask at p (default: the inference p; a [B] array gives one p
                         per image) + ME, then the network (ME-Net inference, Algorithm 1);
                         gradient="bpda" passes gradients straight through ME (docs/method.md
                         §5.1), "exact" differentiates through the solver for the drawn mask
                         (§5.6), "none" leaves ME as written (USVT only is differentiable).
      mode="network"     the bare network; the key is not used.
      mode="fixed_mask"  ME with the one mask drawn from `mask_key` whatever the key (a sanity
                         attack: with the randomness fixed, ME is an ordinary function).
      mode="vote"        majority vote over `votes` masks at the training p's (supplement J): the
                         fraction of masks voting for each class [B, C]; not differentiable.
      mode="vote_soft"   the same `votes` masks, but the log of the mean softmax over them
                         [B, C]: a differentiable stand-in for the vote (gradients through ME by
                         `gradient`), which is what an attack on the vote differentiates.

    `bn="train"` runs BatchNorm on batch statistics (the running statistics are not updated).
    `logits_fn(mode, ...)` returns the same function as `fn(x, key)` with the state bound as a
    traced argument (a `jax.tree_util.Partial`), which is what every attack takes; the function
    object is cached per option set, so jitted attacks trace once per classifier and options.
    `network(x)` and `defended(x, key, ...)` are the same calls with this classifier's state.
    `dataclasses.replace(clf, state=...)` gives the same classifier with other parameters.
    """

    graphdef: Any
    state: Any
    config: ml_collections.ConfigDict
    num_classes: int
    inference_p: float
    step: int = 0
    mesh: Any = None
    _fns: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_model(
        cls,
        model: nnx.Module,
        config: ml_collections.ConfigDict,
        num_classes: int,
        *,
        step: int = 0,
        inference_p: float | None = None,
    ) -> DefendedClassifier:
        """Wraps `model` (switched to eval mode); inference_p defaults to the config's."""
        model.eval()
        graphdef, state = nnx.split(model)
        p = default_inference_p(config.me) if inference_p is None else float(inference_p)
        return cls(graphdef, state, config, num_classes, p, int(step))

    def apply(
        self,
        state,
        x: jax.Array,
        key: jax.Array | None,
        *,
        mode: str = "menet",
        gradient: str = "bpda",
        p=None,
        mask_key: jax.Array | None = None,
        votes: int | None = None,
        bn: str = "eval",
    ) -> jax.Array:
        """Logits (or vote fractions) of `mode` for images x under network state `state`."""
        if mode not in MODES or gradient not in GRADIENTS or bn not in ("eval", "train"):
            raise ValueError(
                f"mode must be one of {MODES}, gradient one of {GRADIENTS}, bn 'eval' or "
                f"'train'; got mode={mode!r}, gradient={gradient!r}, bn={bn!r}."
            )
        if mode == "network":
            return self._network(state, x, bn)
        if mode == "fixed_mask":
            return self.apply(state, x, mask_key, mode="menet", gradient=gradient, p=p, bn=bn)
        if mode in ("vote", "vote_soft"):
            k = votes or int(self.config.me.votes)
            return self._vote(state, x, key, k, gradient, bn, soft=mode == "vote_soft")
        p = self.inference_p if p is None else p
        exact = gradient == "exact"
        rec = me_transform(self.config.me, differentiable=exact, mesh=self.mesh)(key, x, p)
        return self._network(state, straight_through(x, rec) if gradient == "bpda" else rec, bn)

    def logits_fn(self, mode: str = "menet", **options) -> jax.tree_util.Partial:
        """`fn(x, key) -> logits` of `apply(self.state, x, key, mode=mode, **options)`.

        Array options (`mask_key`, an array `p`) travel as traced arguments with the state.
        """
        arrays = {k: v for k, v in options.items() if isinstance(v, jax.Array | np.ndarray)}
        static = {k: v for k, v in options.items() if k not in arrays}
        cache_key = (mode, tuple(sorted(static.items())), tuple(sorted(arrays)))
        if cache_key not in self._fns:

            def fn(state, array_options, x, key):
                return self.apply(state, x, key, mode=mode, **static, **array_options)

            self._fns[cache_key] = fn
        return jax.tree_util.Partial(self._fns[cache_key], self.state, arrays)

    def _network(self, state, x: jax.Array, bn: str) -> jax.Array:
        model = nnx.merge(self.graphdef, state)
        if bn == "train":
            model.train()
        return model(x)

    def _vote(self, state, x, key, votes: int, gradient: str, bn: str, soft: bool) -> jax.Array:
        ps = vote_ps(self.config.me, votes)
        keys = jax.random.split(key, votes)

        def one_vote(k, pk):
            logits = self.apply(state, x, k, mode="menet", gradient=gradient, p=pk, bn=bn)
            if soft:
                return jax.nn.log_softmax(logits, -1)
            return jax.nn.one_hot(jnp.argmax(logits, -1), self.num_classes)

        per_mask = jax.lax.map(lambda a: one_vote(*a), (keys, ps))
        if soft:  # log of the mean probability, computed stably
            return jax.nn.logsumexp(per_mask, axis=0) - jnp.log(votes)
        return jnp.mean(per_mask, axis=0)

    def network(self, x: jax.Array) -> jax.Array:
        """Logits of the bare network (no preprocessing)."""
        return self.apply(self.state, x, None, mode="network")

    def preprocess(self, x: jax.Array, key: jax.Array, *, p=None, bpda: bool = False):
        """One fresh mask at p (default: the inference p) + ME; BPDA makes it straight-through."""
        p = self.inference_p if p is None else p
        y = me_transform(self.config.me, mesh=self.mesh)(key, x, p)
        return straight_through(x, y) if bpda else y

    def defended(
        self, x: jax.Array, key: jax.Array, *, bpda: bool = False, votes: int = 0, p=None
    ) -> jax.Array:
        """ME-Net inference with this classifier's state.

        Args:
          x: images [B,H,W,C] in [0,1].
          key: randomness of the masks.
          bpda: pass gradients straight through ME (white-box BPDA attacks).
          votes: 0 for logits of one fresh mask; k > 0 for majority vote: the fraction of k
            masks, drawn at the training p's (supplement J), that vote for each class [B,C].
          p: override the observation probability of the single-mask path.

        Returns:
          Logits [B, num_classes], or vote fractions [B, num_classes] when votes > 0.
        """
        gradient = "bpda" if bpda else "none"
        if votes > 0:
            return self.apply(self.state, x, key, mode="vote", votes=votes, gradient=gradient)
        return self.apply(self.state, x, key, mode="menet", gradient=gradient, p=p)


def vote_ps(me_config: ml_collections.ConfigDict, votes: int) -> jnp.ndarray:
    """Observation probabilities of the k voting masks: the training schedule with k masks."""
    if me_config.method == "none":
        return jnp.ones((votes,), jnp.float32)
    return jnp.asarray(
        me.p_schedule(me_config.p_start, me_config.p_end, votes, include_end=me_config.include_end)
    )
