r"""Command line of the studies (docs/method.md §8).

  python -m menet_jax.study NAME --config=configs/mnist_demo.py --workdir=DIR [--config.KEY=V]
  python -m menet_jax.study --list

Writes DIR/NAME.md, DIR/NAME.json and DIR/NAME.png; trained models are cached in DIR/models and
each point's evaluation is DIR/points/<point>/. Running the same command again resumes. Errors a
user can cause end in one line on stderr and a non-zero exit.
"""

import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from menet_jax.cli import define_config_flag, fail, parse_flags

FLAGS = flags.FLAGS
define_config_flag("config", "Base config file (configs/*.py[:variant]).")
flags.DEFINE_string("workdir", None, "Where models, points and the study's outputs go.")
flags.DEFINE_bool("list", False, "List the studies and exit.")


def _list() -> int:
    from menet_jax.study import STUDIES

    width = max(map(len, STUDIES))
    for name, study in STUDIES.items():
        print(f"{name:<{width}}  {study.title}")
    return 0


def main(argv) -> int:
    from menet_jax.study import STUDIES

    if FLAGS.list:
        return _list()
    names = argv[1:]
    if len(names) != 1:
        return fail(f"name one study (one of {', '.join(STUDIES)}); got {names or 'none'}; "
                     "--list describes them")  # fmt: skip
    if names[0] not in STUDIES:
        return fail(f"unknown study {names[0]!r}; the studies are {', '.join(STUDIES)}")
    if FLAGS.config is None or not FLAGS.workdir:
        return fail("--config and --workdir are required")
    import os

    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    from menet_jax.study import run_study
    from menet_jax.train import TrainingDivergedError

    overrides = dict(config_flags.get_override_values(FLAGS["config"]))
    command = "python -m menet_jax.study " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        spec = config_flags.get_config_filename(FLAGS["config"])
        out = run_study(names[0], FLAGS.config, FLAGS.workdir, overrides=overrides,
                        command=command, config_spec=spec)  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume (finished models and points "
              "are kept)", file=sys.stderr)  # fmt: skip
        return 130
    except (ValueError, FileNotFoundError, TrainingDivergedError) as e:
        if os.environ.get("MENET_DEBUG"):
            raise
        return fail(str(e))
    print(f"study {names[0]} done in {out['wall_time_s']:.0f} s: "
          f"{os.path.join(FLAGS.workdir, names[0])}.md")  # fmt: skip
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
