r"""CIFAR-10, ResNet-18 (supplement Table 8). Default: pure ME-Net of Table 9's top row.

  python -m menet_jax.main --config=configs/cifar10.py --workdir=/tmp/menet_cifar10
  python -m menet_jax.main --config=configs/cifar10.py:adv --workdir=/tmp/menet_cifar10_adv
  python -m menet_jax.main --config=configs/cifar10.py:wrn --workdir=/tmp/menet_cifar10_wrn

Variants: `adv` is Table 13's ResNet-18 row p 0.4->0.6, adversarially trained (PGD-7, eps 8/255,
step 2/255) with nuclear-norm ME, learning rate decayed at 50/100/150 as the authors' code does;
`wrn` swaps in WRN-28-10.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from base import apply_variant, get_base_config  # noqa: E402


def _adv(c):
    c.me.method = "nucnorm"  # Table 13's rows match Table 24's nuclear-norm row
    c.me.p_start, c.me.p_end = 0.4, 0.6
    c.lr_boundaries_epochs = (50, 100, 150)
    c.adv.enabled = True
    c.adv.eps, c.adv.step_size, c.adv.steps = 8 / 255, 2 / 255, 7


def _wrn(c):
    c.model = "wrn28_10"


def get_config(arg=None):
    c = get_base_config()
    c.dataset = "cifar10"
    c.model = "resnet18"
    c.num_epochs = 200
    c.learning_rate = 0.1
    c.lr_boundaries_epochs = (100, 150)
    c.augment = True
    # Table 9, p 0.8->1: its rows match Table 23's Soft-Impute row (docs/method.md §3.4).
    c.me.method = "softimpute"
    c.me.p_start, c.me.p_end = 0.8, 1.0
    c.eval.eps, c.eval.step_size = 8 / 255, 2 / 255
    apply_variant(c, arg, {"adv": _adv, "wrn": _wrn})
    return c
