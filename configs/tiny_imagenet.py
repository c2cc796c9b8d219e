r"""Tiny-ImageNet (64x64, 200 classes), DenseNet-121 (Table 8). Default: Table 20's top row.

Tiny-ImageNet is not in the tfds catalog: download the official `tiny-imagenet-200` folder and
pass the directory holding it.

  python -m menet_jax.main --config=configs/tiny_imagenet.py --workdir=/tmp/menet_tin \
      --config.data_dir=/data
  python -m menet_jax.main --config=configs/tiny_imagenet.py:adv --workdir=/tmp/menet_tin_adv \
      --config.data_dir=/data

S' for Tiny-ImageNet is 1M reconstructions (12 GB as uint8): the default is `me.mode=online`,
which trains on exactly the same S' without storing it.
Variant `adv`: Table 22's p 0.4->0.6 adversarially trained row (PGD-7, eps 8/255).
Variant `madry`: Madry et al.'s adversarial training alone (the same PGD-7), without ME.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from base import apply_variant, get_base_config  # noqa: E402


def _adv(c):
    c.me.method = "nucnorm"
    c.me.p_start, c.me.p_end = 0.4, 0.6
    # Table 8's decay (30/60): no adversarial-training code was released for Tiny-ImageNet
    # (docs/method.md §3.5).
    c.lr_boundaries_epochs = (30, 60)
    c.adv.enabled = True


def _madry(c):
    # Adversarial training alone (Madry et al.), the baseline of the "Prep. + Adv. train" rows:
    # the `adv` variant's attack and learning-rate decay, no ME (one copy per image: an epoch is
    # one pass over the training set, as for the vanilla model).
    _adv(c)
    c.me.method = "none"


def get_config(arg=None):
    c = get_base_config()
    c.dataset = "tiny_imagenet"
    c.model = "densenet121"
    c.num_epochs = 90
    c.learning_rate = 0.1
    c.lr_boundaries_epochs = (30, 60)
    c.augment = True
    c.me.method = "softimpute"
    c.me.mode = "online"
    c.me.p_start, c.me.p_end = 0.8, 1.0
    c.eval_batch_size = 200
    apply_variant(c, arg, {"adv": _adv, "madry": _madry})
    return c
