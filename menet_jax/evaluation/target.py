"""The evaluated classifier as jit-friendly functions: what attacks differentiate, how rows judge.

`EvaluatedClassifier(clf, votes=, top5=, gradient=)` wraps a `DefendedClassifier` (or the
classifier of a user's function, `user_model.FunctionClassifier`, which has the same `apply`,
`logits_fn` and properties) once, so every jitted function keeps its cache across batches and
rows (arrays travel as traced arguments, functions by identity). Every logits function comes
from the classifier's `logits_fn`:

  whitebox   one fresh mask + ME, gradients by `gradient` ("bpda" straight-through or "exact");
  network    the bare network;
  vote_soft  the log of the mean softmax over the vote's k fresh masks (what an attack on the
             majority vote differentiates; docs/method.md §5.7);
  fixed(k)   ME with the one mask drawn from k, exact gradients (a sanity attack).

`judges[name](state, x_adv, y, idx, keys)` scores images on the 2R judging draws (docs/method.md
§6): "defended" (one fresh mask per draw and example), "vote" (the k-mask majority vote per draw),
"network" (the bare network, the same on every draw) and "fixed" (one fixed mask).

Devices: `mesh` (axis 'data', every device of every process) is where batches live, sharded on
their first axis; the network state is replicated on it. The attacks' logits functions come from
a classifier that runs ME per device (`defense.me_transform`); the per-example judges run whole
per device (`jax.shard_map`: each example's masks come from its index, so nothing depends on the
split). Every judge, and `host` for attack images, returns arrays replicated on every device of
every process, so each process reads the same per-example results.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import Partial

from menet_jax import attacks
from menet_jax.mesh import data_mesh


def score(logits: jax.Array, y: jax.Array, *, top5: bool, votes: bool = False) -> dict:
    """Per draw and example: correct, top-5 correct; per example whether draws disagree.

    Args:
      logits: [D, B, C] logits (or vote fractions when `votes`) of D draws.
      y: [B] labels.
      top5: also score top-5 correctness.
      votes: the values are vote fractions; a class that got no vote is never in the top 5.
    """
    out = {"correct": jnp.argmax(logits, -1) == y[None]}
    if top5:
        vals, idx = jax.lax.top_k(logits, 5)
        hit = idx == y[None, :, None]
        if votes:
            hit = hit & (vals > 0)
        out["top5"] = jnp.any(hit, -1)
    out["pred_varies"] = jnp.any(jnp.argmax(logits, -1) != jnp.argmax(logits[0], -1), 0)
    out["logits_vary"] = jnp.any(logits != logits[:1], axis=(0, 2))
    return out


def _score_specs(top5: bool) -> dict:
    """shard_map out_specs of `score`: draws x examples, and per-example flags."""
    specs = {"correct": P(None, "data"), "pred_varies": P("data"), "logits_vary": P("data")}
    return {**specs, "top5": P(None, "data")} if top5 else specs


class EvaluatedClassifier:
    """Pure functions of one classifier, created once so jit caches stay warm across batches."""

    def __init__(self, clf, *, votes: int, top5: bool, gradient: str = "bpda", mesh=None):
        mesh = data_mesh() if mesh is None else mesh
        self.mesh, self.batch_sharding = mesh, NamedSharding(mesh, P("data"))
        self.replicated = NamedSharding(mesh, P())
        local = clf  # ME in one piece: the judges run whole per device
        # Through host memory: a restored state may sit committed on one device.
        state = self.replicate(jax.device_get(clf.state))
        clf = dataclasses.replace(clf, state=state, mesh=mesh)
        self.clf, self.state, self.votes = clf, clf.state, votes
        self.preprocessed = clf.has_preprocessing  # a preprocessing runs before the network
        self.randomized = clf.randomized  # predictions depend on a random draw
        self.has_exact_gradient = clf.has_exact_gradient  # the fixed-mask row needs one
        self.lacks, self.description = clf.lacks, clf.describe()
        self.gradient = gradient
        self.whitebox = clf.logits_fn("menet", gradient=gradient)
        self.network = clf.logits_fn("network")
        self.vote_soft = clf.logits_fn("vote_soft", votes=votes, gradient=gradient)
        self.preprocess = jax.jit(lambda x, k: clf.preprocess(x, k))

        def bpda(state, x, key):
            return clf.apply(state, x, key, mode="menet", gradient="bpda")

        def at_rec(state, rec, x0, z, key):  # network-only: ME(x) fixed, delta on top
            return clf.apply(state, rec + (z - x0), key, mode="network")

        self._at_rec = at_rec

        def local_bpda(state, x, key):
            return local.apply(state, x, key, mode="menet", gradient="bpda")

        def local_vote(state, x, key):
            return local.apply(state, x, key, mode="vote", votes=votes)

        def per_example(fn, *, is_vote=False):
            def draws(state, x, y, idx, keys):
                def one(k):
                    ks = jax.vmap(lambda i: jax.random.fold_in(k, i))(idx)
                    return jax.vmap(lambda xi, ki: fn(state, xi[None], ki)[0])(x, ks)

                return score(jax.lax.map(one, keys), y, top5=top5, votes=is_vote)

            if mesh.size > 1:  # per example: each device judges its own examples, no collective
                data = P("data")
                draws = jax.shard_map(draws, mesh=mesh, in_specs=(P(), data, data, data, P()),
                                      out_specs=_score_specs(top5), check_vma=False)  # fmt: skip
            return self._jit(draws)

        def network_judge(state, x, y, idx, keys):
            return score(clf.apply(state, x, None, mode="network")[None], y, top5=top5)

        def fixed_judge(state, x, y, key):
            return score(bpda(state, x, key)[None], y, top5=top5)

        self.judges = {
            "defended": per_example(local_bpda),
            "vote": per_example(local_vote, is_vote=True),
            "network": self._jit(network_judge),
            "fixed": self._jit(fixed_judge),
        }

        def grad_is_zero(state, x, y, key):
            def loss(z):
                return jnp.sum(attacks.cross_entropy(bpda(state, z, key), y))

            g = jax.grad(loss)(x)
            return jnp.all(g.reshape(g.shape[0], -1) == 0, axis=-1)

        self.grad_is_zero = self._jit(grad_is_zero)

        def look_like_probabilities(state, x, key):
            logits = bpda(state, x, key)
            sums_to_one = jnp.abs(jnp.sum(logits, -1) - 1) < 1e-4
            return sums_to_one & jnp.all((logits >= 0) & (logits <= 1), -1)

        self.look_like_probabilities = self._jit(look_like_probabilities)
        self._gather = self._jit(lambda tree: tree)

    def _jit(self, fn):
        """jit with every output replicated: each process can read all of it."""
        return jax.jit(fn, out_shardings=self.replicated)

    def put(self, batch: np.ndarray) -> jax.Array:
        """A global batch (the same host array on every process) sharded over the mesh; each
        process supplies its contiguous slice (`input_pipeline.local_batch_indices`' layout)."""
        procs, me_ = jax.process_count(), jax.process_index()
        size = len(batch) // procs
        local = np.asarray(batch[me_ * size : (me_ + 1) * size])
        return jax.make_array_from_process_local_data(self.batch_sharding, local, batch.shape)

    def replicate(self, tree):
        """Values the same on every process (keys, the state) replicated on the mesh; with
        several processes each supplies the copies on its own devices (device_put refuses a
        sharding over devices of other processes)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)
        return multihost_utils.host_local_array_to_global_array(tree, self.mesh, P())

    def host(self, tree):
        """Device results as numpy on every process, in example order (a collective: every
        process calls it in the same sequence)."""
        return jax.device_get(self._gather(tree))

    def at_rec(self, rec, x):
        """The network at a fixed reconstruction `rec` of x, perturbation added on top."""
        return Partial(self._at_rec, self.state, rec, x)

    def fixed(self, mask_key):
        """ME with the one mask drawn from `mask_key`, exact gradients through the solver."""
        return self.clf.logits_fn("fixed_mask", mask_key=mask_key, gradient="exact")
