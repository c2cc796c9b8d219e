"""Shared defaults for every menet-jax config.

The training, `me` and `adv` keys, their defaults and their checks are the schema in
`menet_jax/config.py` (supplement Table 8's common settings; docs/method.md §4); the evaluation
keys are set here. Per-dataset files import `get_base_config()` and override. Every key is part of
the documented surface: users override them on the command line, e.g.
`--config.me.method=softimpute --config.num_epochs=10`.
"""

import ml_collections

from menet_jax.config import ConfigError, default_config


def get_base_config() -> ml_collections.ConfigDict:
    c = default_config()

    # Evaluation (the attack suite; menet_jax/evaluation/, docs/method.md §5-6).
    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 1000
    c.eval.eps = 8 / 255
    # Gradient of ME in white-box attacks: 'bpda' (identity, the paper's) or 'exact' (through the
    # solver for the drawn mask; docs/method.md §5.6). The fixed-mask sanity row always uses exact.
    c.eval.gradient = "bpda"
    c.eval.step_size = 2 / 255
    c.eval.pgd_steps = (7, 20, 40, 100)
    c.eval.long_pgd_steps = 1000
    c.eval.long_pgd_examples = 200
    c.eval.restarts = 1
    c.eval.cw_kappas = (20.0, 50.0)
    c.eval.eot_samples = 41  # Tramer et al.: 1 + 40 masks per step
    c.eval.eot_steps = 200
    c.eval.eot_examples = 200
    c.eval.spsa_examples = 100
    c.eval.spsa_steps = 100
    c.eval.spsa_samples = 2048
    c.eval.boundary_examples = 100
    c.eval.boundary_steps = 1000
    c.eval.boundary_proposals = 25  # foolbox 1.6.2's max_directions, as the authors ran it
    # APGD for randomised defences (AutoAttack's "rand" version): 100 iterations, EOT 20.
    c.eval.apgd_losses = ("ce", "dlr")
    c.eval.apgd_steps = 100
    c.eval.apgd_eot_samples = 20
    c.eval.apgd_examples = -1
    # The authors' transfer CW: CW-L2 with confidence 20, 1,000 iterations (foolbox 1.6.2).
    c.eval.cw_l2_confidence = 20.0
    c.eval.cw_l2_steps = 1000
    c.eval.eval_keys = 5  # R fixed evaluation draws of ME-Net's randomness
    c.eval.cw_examples = -1  # -1: all eval.num_examples; 0 skips a row (every *_examples)
    c.eval.eot_step_size = -1.0  # -1: 5 * eps / eot_steps (Tramer et al.: 5 * eps / 200)
    c.eval.spsa_learning_rate = 0.01
    c.eval.spsa_delta = 0.01
    c.eval.vote_examples = -1
    c.eval.eps_multipliers = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # sanity sweep of PGD's eps
    c.eval.sweep_examples = 200  # sweep and fixed-mask rows
    c.eval.source_workdir = ""  # transfer attacks: an independently trained source model
    c.eval.attacks = "all"  # comma-separated subset, or 'all'
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
