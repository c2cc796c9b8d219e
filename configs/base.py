"""Shared defaults for every menet-jax config.

The training, `me` and `adv` keys, their defaults and their checks are the schema in
`menet_jax/config.py` (supplement Table 8's common settings; docs/method.md §4); the `eval`
section is `menet_jax.evaluation.settings.eval_config()`. Per-dataset files import
`get_base_config()` and override. Every key is part of the documented surface: users override
them on the command line, e.g. `--config.me.method=softimpute --config.eval.apgd.steps=20`.
"""

import ml_collections

from menet_jax.config import ConfigError, default_config
from menet_jax.evaluation.settings import eval_config


def get_base_config() -> ml_collections.ConfigDict:
    c = default_config()

    # Evaluation (the attack suite; menet_jax/evaluation/, docs/method.md §5-6): the keys every
    # row shares (eval.eps, eval.num_examples, ...) and one section per kind of row
    # (eval.pgd.steps, eval.apgd.eot_samples, ...), with the paper's and AutoAttack's budgets as
    # defaults (eval.autoattack_rand: AutoAttack's 'rand' protocol, 100 iterations x EOT 20, on
    # every example); menet_jax/evaluation/rows.py defines each key beside its check.
    c.eval = eval_config()
    return c


def apply_variant(config: ml_collections.ConfigDict, arg: str | None, variants: dict) -> None:
    """Applies `--config=configs/X.py:VARIANT` overrides; raises on an unknown variant."""
    if not arg:
        return
    for name in arg.split(","):
        if name not in variants:
            raise ConfigError(
                f"unknown config variant {name!r}; allowed: {', '.join(sorted(variants))}"
            )
        variants[name](config)
