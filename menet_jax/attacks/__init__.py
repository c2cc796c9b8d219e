"""Adversarial attacks: pure JAX, batched, each one jitted computation with `lax` loops.

Every attack takes `logits_fn(x, key) -> logits` (a pure, jittable function; the key feeds the
model's own randomness, e.g. ME-Net's masks), images x [B, H, W, C] in [0, 1], integer labels
y [B], a typed key and keyword-only options, and returns float32 images of x's shape in [0, 1]:
inside the L-inf eps-ball for `fgsm`, `pgd`, `apgd` and `spsa`; `boundary` and `cw_l2` (L2
attacks) are unbounded (score them with `linf_distance`). BPDA lives in the defended model, not
here. The method: docs/method.md §5.

Modules: one per attack (`fgsm`, `pgd`, `apgd`, `spsa`, `boundary`, `cw_l2`), each a public function
that checks its arguments and a jitted core; what they share: `losses` (the losses they
maximise), `linf` (the eps-ball projection and the L-inf distance), `logits_fn` (how
`logits_fn` is passed to jit), `arguments` (argument checks: errors a user can cause).
"""

from menet_jax.attacks.apgd import apgd
from menet_jax.attacks.boundary import boundary
from menet_jax.attacks.cw_l2 import cw_l2
from menet_jax.attacks.fgsm import fgsm
from menet_jax.attacks.linf import linf_distance
from menet_jax.attacks.losses import cross_entropy, cw_loss, dlr_loss, dlr_targeted_loss, margin
from menet_jax.attacks.pgd import pgd
from menet_jax.attacks.spsa import spsa

__all__ = [
    "apgd",
    "boundary",
    "cross_entropy",
    "cw_l2",
    "cw_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "fgsm",
    "linf_distance",
    "margin",
    "pgd",
    "spsa",
]
