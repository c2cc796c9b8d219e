"""`python -m menet_jax.bench eval --config=configs/cifar10.py`: a whole evaluation, timed.

What a full evaluation of the config costs on this backend, row by row, without its dataset:
the config's model (ResNet-18 for CIFAR-10) is trained for `--epochs` on the CPU demo's 4,000
real MNIST training digits brought to the dataset's image shape (zero-padded or cropped to its
height and width, the grey channel repeated over its channels; labels 0-9), then the ordinary
evaluation (`menet_jax.evaluation.evaluate`, every row at the config's budget) runs on the first
`--examples` of the 1,000 test digits. The model learns the digits, so the attacks that stop
early on an example they have fooled (Boundary, CW) see a trained classifier, not chance.

Prints `name: value` lines: the training seconds, clean accuracy, each row's seconds and
example-steps per second (examples x steps x EOT or SPSA samples x restarts / seconds) where the
row states its steps, and the evaluation's total. Accuracies here describe digits, not the
config's dataset: only the seconds carry over (a row's seconds grow linearly with its examples,
after its first batch's compilation).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from menet_jax import cli, input_pipeline
from menet_jax.bench import common
from menet_jax.config import ConfigError, load_config
from menet_jax.evaluation import settings

_LOAD_SPLIT = input_pipeline.load_split  # the real loader, also while main() replaces it


def digits_as(shape: tuple[int, int, int], split: str) -> tuple[np.ndarray, np.ndarray]:
    """The demo's MNIST digits (uint8) padded/cropped to shape[:2] with shape[2] channels."""
    images, labels = _LOAD_SPLIT("mnist_5k", split, progress=False)
    h, w, c = shape
    out = np.zeros((len(images), h, w, c), np.uint8)
    sh, sw = min(h, 28), min(w, 28)
    oh, ow = (h - sh) // 2, (w - sw) // 2  # where the digit goes
    ih, iw = (28 - sh) // 2, (28 - sw) // 2  # what of the digit is kept
    out[:, oh : oh + sh, ow : ow + sw, :] = images[:, ih : ih + sh, iw : iw + sw, :1]
    return out, labels


def _parse(argv):
    args = (
        cli.Options("python -m menet_jax.bench eval", __doc__)
        .define("string", "config", "configs/cifar10.py", "configs/*.py[:variant]")
        .define("integer", "examples", 100, "test examples evaluated")
        .define("integer", "epochs", 2, "training epochs on the digits")
        .define("string", "attacks", "", "eval.attacks override ('' = the config's)")
        .define("string", "workdir", "", "'' = a temporary folder")
        .parse(argv)
    )
    for name in ("examples", "epochs"):
        if getattr(args, name) < 1:
            raise cli.UsageError(f"--{name}={getattr(args, name)} must be a positive integer.")
    if args.attacks:
        try:  # before training, not after
            settings.parse_attacks(args.attacks)
        except ConfigError as e:
            raise cli.UsageError(str(e)) from None
    config = load_config(args.config)
    config.num_epochs = args.epochs
    config.eval.num_examples = args.examples
    config.eval.transfer.source_workdir = None  # no source model: its row is skipped
    if args.attacks:
        config.eval.attacks = args.attacks
    return args, config


def main(argv: list[str]) -> int:
    """Runs the benchmark; returns a process exit code (2 for a bad option, 1 for a config file
    that cannot be loaded, as `menet_jax.main` exits)."""
    try:
        args, config = _parse(argv)
    except cli.UsageError as e:
        return common.fail(e)
    except ConfigError as e:
        return cli.fail(str(e))
    from menet_jax import evaluation, train

    shape = input_pipeline.get_info(config.dataset, data_dir=config.data_dir).image_shape
    input_pipeline.load_split = lambda name, split, **kw: digits_as(shape, split)
    backend, count, kind = common.devices()
    common.report("backend", f"{backend} x{count} ({kind})")
    what = f"{config.dataset}, {config.model}, me {config.me.method}"
    common.report("config", f"{args.config} ({what})")
    workdir = args.workdir or tempfile.mkdtemp(prefix="menet_bench_eval_")
    try:
        start = time.perf_counter()
        summary = train.train_and_evaluate(config, workdir)
        common.report("train_seconds", f"{time.perf_counter() - start:.1f}")
        common.report("clean_accuracy_digits", f"{summary['clean_accuracy']:.4f}")
        start = time.perf_counter()
        evaluation.evaluate(config, workdir)
        total = time.perf_counter() - start
    finally:
        input_pipeline.load_split = _LOAD_SPLIT
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    budgets = results["budgets"]
    for name, b in budgets["rows"].items():
        common.report(f"{name}_seconds", f"{b['seconds']:.1f}")
        work = int(b["examples"]) * int(b["steps"] or 0) * int(b["samples"] or 1) * b["restarts"]
        if work and b["seconds"] > 0:
            common.report(f"{name}_example_steps_per_s", f"{work / b['seconds']:.0f}")
    if "runtime_checks" in budgets:
        common.report("runtime_checks_seconds", f"{budgets['runtime_checks']['seconds']:.1f}")
    common.report("headline_digits", f"{results['headline']['accuracy']:.4f}")
    common.report("eval_seconds", f"{total:.1f}")
    common.report("workdir", workdir)
    return 0
