r"""Command line: train and/or evaluate ME-Net.

  python -m menet_jax.main --config=configs/mnist_demo.py --workdir=/tmp/menet_demo
  python -m menet_jax.main --config=configs/cifar10.py:adv --workdir=DIR --mode=eval

Modes (--mode), each named for what it runs:
  train           training (resumes from WORKDIR), then clean accuracy: WORKDIR/summary.json
  eval            the attack suite on WORKDIR's checkpoint: WORKDIR/results.{json,md,npz}
  train_and_eval  both, one after the other (the default)
Errors a user can cause end in one line on stderr and a non-zero exit. SIGTERM
(preemption) saves the work so far and exits with 143 (`menet_jax.preemption`); the same command
resumes.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from menet_jax.cli import define_config_flag, fail, parse_flags

FLAGS = flags.FLAGS
define_config_flag("config", "Config file (configs/*.py[:variant]).")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
flags.DEFINE_enum(
    "mode",
    "train_and_eval",
    ["train", "eval", "train_and_eval"],
    "train: training, then clean accuracy (summary.json); eval: the attack suite on the "
    "workdir's checkpoint (results.json); train_and_eval: both.",
)
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str, overrides=()) -> None:
    """What `main` does, callable from a notebook cell.

    The whole config (training, `me`, `adv` and `eval`) is checked before either phase, so a bad
    evaluation key fails before training. `overrides`: the keys set on the command line; in the
    evaluation they may change only its own settings and ME's inference options
    (`evaluation.suite.config_in_force`).
    """
    import jax

    from menet_jax import evaluation, train
    from menet_jax.config import validate
    from menet_jax.evaluation.settings import validate_eval

    validate(config)
    validate_eval(config.eval)
    if jax.process_count() > 1:
        print(f"process {jax.process_index()} of {jax.process_count()}", file=sys.stderr)
    if mode in ("train", "train_and_eval"):
        summary = train.train_and_evaluate(config, workdir)
        print(
            f"clean accuracy {summary['clean_accuracy']:.4f} (network alone "
            f"{summary['network_accuracy']:.4f}) after {summary['train_time_s']:.0f} s; "
            f"summary in {workdir}/summary.json"
        )
    if mode in ("eval", "train_and_eval"):
        h = evaluation.evaluate(config, workdir, overrides=overrides)["headline"]
        lo, hi = h["interval"]
        print(
            f"headline robust accuracy {h['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}) on "
            f"{h['n']} examples, per-example worst case over {len(h['rows'])} rows; "
            f"report in {workdir}/results.md"
        )


def main(argv):
    del argv
    import os

    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    from menet_jax.cluster import ClusterError
    from menet_jax.preemption import EXIT_CODE, Preempted, watch
    from menet_jax.train import TrainingDivergedError

    try:
        with watch():  # one flag for both phases: SIGTERM between them stops the second
            overrides = config_flags.get_override_values(FLAGS["config"])
            run(FLAGS.config, FLAGS.workdir, FLAGS.mode, overrides=tuple(overrides))
    except Preempted as e:  # SIGTERM: the work so far is saved; a launcher requeues on 143
        print(str(e), file=sys.stderr)
        return EXIT_CODE
    except KeyboardInterrupt:
        print(
            "interrupted; run the same command again to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    # ConfigError, CheckpointError and DatasetNotPreparedError are ValueErrors.
    except (ValueError, FileNotFoundError, TrainingDivergedError, ClusterError) as e:
        if os.environ.get("MENET_DEBUG"):
            raise
        return fail(str(e))
    return 0


def entry() -> None:
    """`python -m menet_jax.main`: joins the cluster job the environment names, then runs."""
    from menet_jax import cluster

    try:
        if cluster.needs_supervisor():  # jax ends a failed join from C++: watch from outside
            sys.exit(cluster.supervise("menet_jax.main", sys.argv[1:]))
        cluster.join()  # every process of a pod or cluster job joins before any jax call
    except cluster.ClusterError as e:
        sys.exit(fail(str(e)))
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
    entry()
