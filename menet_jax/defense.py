"""The defended classifier: ME-Net inference (fresh mask + matrix estimation) then the network.

Every way the project classifies an image comes from `DefendedClassifier`: ME-Net inference,
the bare network, a fixed mask and majority vote over several masks (supplement J); see
docs/method.md §3.3 and §5. What ME does to the image (the method, its options, the p's, BPDA and
exact gradients, per-device execution) is `menet_jax.preprocess`, built from `config.me`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from menet_jax import preprocess

# The p's and options of a config, as `menet_jax.preprocess` defines them.


def training_ps(me_config: ml_collections.ConfigDict) -> np.ndarray:
    """The n observation probabilities of Algorithm 1 (one per mask); [1.0] without ME."""
    return preprocess.from_config(me_config).training_ps()


def default_inference_p(me_config: ml_collections.ConfigDict) -> float:
    """The test-time p: `me.inference_p` if set, else the mean of the training p's."""
    return preprocess.from_config(me_config).inference_p()


def vote_ps(me_config: ml_collections.ConfigDict, votes: int) -> jnp.ndarray:
    """Observation probabilities of the k voting masks: the training schedule with k masks."""
    return preprocess.from_config(me_config).vote_ps(votes)


MODES = ("menet", "network", "fixed_mask", "vote", "vote_soft")
GRADIENTS = ("bpda", "exact", "none")  # preprocess.GRADIENTS


class LogitsFunctions:
    """`logits_fn` for a classifier with `apply(state, x, key, mode=..., **options)`, `state` and
    a `_fns` cache: what `DefendedClassifier` and the evaluation's classifier of a user's
    function (`evaluation.user_model.FunctionClassifier`) share."""

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


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (jit of bound methods)
class DefendedClassifier(LogitsFunctions):
    """A trained network behind ME-Net's preprocessing (immutable): the one source of logits.

    Attributes:
      graphdef: the network's NNX graph definition (in eval mode).
      state: the network's state (parameters and BatchNorm statistics).
      config: the run's full config.
      num_classes: number of classes.
      inference_p: the observation probability of ME-Net inference.
      step: the training step the state comes from.
      mesh: None, or a device mesh with axis 'data' over which batches are sharded: ME then
        runs per device (`preprocess.Preprocessor.transform`), with the masks and values of
        one device.

    Every way the project classifies an image is `apply(state, x, key, mode=...)`, a pure function
    of (network state, images [B,H,W,C] in [0,1], typed key) for one fixed set of options:

      mode="menet"       one fresh mask at p (default: the inference p; a [B] array gives one p
                         per image) + ME, then the network (ME-Net inference, Algorithm 1);
                         gradient="bpda" passes gradients straight through ME (docs/method.md
                         §5.1), "exact" differentiates through the solver for the drawn mask
                         (§5.6; refused for a method registered without one), "none" leaves
                         ME as written (USVT only is differentiable).
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

    @property
    def has_preprocessing(self) -> bool:
        """ME runs before the network (False for the vanilla baseline, me.method=none)."""
        return not preprocess.from_config(self.config.me).identity

    @property
    def randomized(self) -> bool:
        """Predictions depend on a random draw (the masks): every ME method is randomised."""
        return self.has_preprocessing

    @property
    def has_exact_gradient(self) -> bool:
        """The method has an exact reverse-mode gradient for a fixed mask (docs/method.md §5.6)."""
        return preprocess.get(self.config.me.method).differentiable

    def lacks(self, need: str) -> str:
        """Why a row that needs `need` ("preprocessing", "randomness" or "exact_gradient")
        cannot run on this classifier."""
        if need == "exact_gradient":
            return "the ME method has no exact gradient"
        return "ME-only row; the model has no ME (me.method=none)"  # ME is both or neither

    def describe(self) -> str:
        """The preprocessing in words (the report)."""
        return f"ME {self.config.me.method}" if self.has_preprocessing else "no ME"

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
        transform = preprocess.from_config(self.config.me).transform(
            gradient=gradient, mesh=self.mesh
        )
        return self._network(state, transform(key, x, p), bn)

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
        gradient = "bpda" if bpda else "none"
        return preprocess.from_config(self.config.me).transform(gradient=gradient, mesh=self.mesh)(
            key, x, p
        )

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
