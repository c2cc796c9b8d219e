"""Shared defaults for every menet-jax config (supplement Table 8's common settings).

Per-dataset files import `get_base_config()` and override. Every key here is part of the
documented surface: users override them on the command line, e.g.
`--config.me.method=softimpute --config.num_epochs=10`.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "cifar10"
    c.data_dir = (
        ""  # '' = the tfds default data dir; Tiny-ImageNet: folder holding tiny-imagenet-200
    )
    c.model = "resnet18"
    c.num_train_examples = -1  # -1: the whole train split; else its first N (tests, quick looks)
    c.num_epochs = 200.0  # epochs of S' (n*M examples) for ME-Net, of S (M) for the vanilla model
    c.batch_size = 256  # global batch, split over every device of every process
    c.learning_rate = 0.1
    c.lr_boundaries_epochs = (100, 150)
    c.lr_decay_factor = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4  # PyTorch-style L2 added to the gradient, as the authors' SGD does
    c.augment = True  # pad 4 + random crop + horizontal flip, applied after ME
    c.seed = 0
    c.num_train_steps = -1  # -1: num_epochs worth of steps
    c.checkpoint_every_steps = 2000
    c.keep_checkpoints = 3
    c.log_every_steps = 100
    c.eval_batch_size = 500
    c.num_eval_examples = -1  # -1: the whole test split
    c.progress_bar = True

    # Matrix estimation (SPEC section 2-3).
    c.me = ml_collections.ConfigDict()
    c.me.method = "usvt"  # none | usvt | softimpute | nucnorm
    c.me.channels = "concat"  # concat ([R|G|B], the paper) | separate
    c.me.p_start = 0.8
    c.me.p_end = 1.0
    c.me.num_masks = 10
    c.me.include_end = (
        False  # False: the paper's text (a + k(b-a)/n, k=0..n-1); True: authors' code
    )
    c.me.mode = "offline"  # offline: build S' once, cached in the workdir | online: ME in the step
    c.me.build_batch_size = 1024  # offline: images reconstructed per device call while building S'
    c.me.inference_p = -1.0  # -1: mean of the training p's (Algorithm 1)
    c.me.votes = 0  # >0: also report majority-vote accuracy over this many masks (supplement J)
    # Solver options (each used only by the solvers that take it).
    c.me.rank_fraction = 0.8  # usvt, as coded by the authors
    c.me.threshold = ""  # usvt: '' = coded rank rule | 'chatterjee' = the textbook threshold
    c.me.shrinkage = -1.0  # softimpute: -1 = sigma_max / 50 (fancyimpute)
    c.me.max_iters = 100  # softimpute / nucnorm
    c.me.tol = 1e-3  # softimpute / nucnorm
    c.me.accelerated = False  # softimpute: warm-started accelerated mode
    c.me.mu = 1.0  # nucnorm

    # Madry-style adversarial training through ME with BPDA (SPEC section 3).
    c.adv = ml_collections.ConfigDict()
    c.adv.enabled = False
    c.adv.eps = 8 / 255
    c.adv.step_size = 2 / 255
    c.adv.steps = 7
    c.adv.random_start = True

    # Evaluation (attack suite; see menet_jax/evaluate.py).
    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 1000
    c.eval.eps = 8 / 255
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
    c.eval.eval_keys = 5  # R fixed evaluation draws of ME-Net's randomness
    c.eval.cw_examples = -1  # -1: all eval.num_examples; 0 skips a row (every *_examples)
    c.eval.eot_step_size = -1.0  # -1: 5 * eps / eot_steps (Tramer et al.: 5 * eps / 200)
    c.eval.spsa_learning_rate = 0.01
    c.eval.spsa_delta = 0.01
    c.eval.votes = 10  # majority-vote rows when me.votes = 0
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
            raise ValueError(
                f"unknown config variant {name!r}; allowed: {', '.join(sorted(variants))}"
            )
        variants[name](config)
