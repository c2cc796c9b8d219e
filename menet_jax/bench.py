"""Benchmarks, printed as `name: value` lines.

  python -m menet_jax.bench me        # ME solvers vs the authors' one-image-at-a-time code
  python -m menet_jax.bench train --config=configs/mnist_demo.py
  python -m menet_jax.bench attack

Each subcommand lives beside the code it measures; this module only dispatches.
"""

import importlib
import sys

_SUBCOMMANDS = {
    "me": "menet_jax.me.benchmark",
    "train": "menet_jax.train_benchmark",
    "attack": "menet_jax.attacks.benchmark",
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in _SUBCOMMANDS:
        print(f"usage: python -m menet_jax.bench {{{'|'.join(_SUBCOMMANDS)}}} [options]")
        return 2
    module = importlib.import_module(_SUBCOMMANDS[argv[1]])
    return module.main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
