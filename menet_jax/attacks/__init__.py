"""Adversarial attacks: pure JAX, batched, each one jitted computation with `lax` loops.

Every attack takes `logits_fn(x, key) -> logits` (a pure, jittable function; the key feeds the
model's own randomness, e.g. ME-Net's masks), images x [B, H, W, C] in [0, 1], integer labels
y [B], a typed key and keyword-only options, and returns float32 images of x's shape in [0, 1]:
inside the L-inf eps-ball for `fgsm`, `pgd` and `spsa`; `boundary` is unbounded (score it with
`linf_distance`). BPDA lives in the defended model, not here.
"""

from menet_jax.attacks.boundary import boundary
from menet_jax.attacks.fgsm import fgsm
from menet_jax.attacks.losses import cross_entropy, cw_loss, linf_distance, margin
from menet_jax.attacks.pgd import pgd
from menet_jax.attacks.spsa import spsa

__all__ = [
    "boundary",
    "cross_entropy",
    "cw_loss",
    "fgsm",
    "linf_distance",
    "margin",
    "pgd",
    "spsa",
]
