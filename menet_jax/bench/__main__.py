"""`python -m menet_jax.bench {me,train,attack,grad,eval} [options]`: runs one benchmark."""

import importlib
import sys

from menet_jax.bench import common

_SUBCOMMANDS = {
    "me": "menet_jax.bench.me",
    "train": "menet_jax.bench.train",
    "attack": "menet_jax.bench.attack",
    "grad": "menet_jax.bench.grad",
    "eval": "menet_jax.bench.eval",
}


def main(argv: list[str]) -> int:
    """argv without the program name: a subcommand, then its options. Returns an exit code."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(f"Options of one: python -m menet_jax.bench {'|'.join(_SUBCOMMANDS)} --help")
        return 0
    if not argv or argv[0] not in _SUBCOMMANDS:
        got = repr(argv[0]) if argv else "nothing"
        return common.fail(
            f"the first argument must be a benchmark, one of {', '.join(_SUBCOMMANDS)}; got {got}."
            " Usage: python -m menet_jax.bench {me,train,attack,grad,eval} [options]"
        )
    return importlib.import_module(_SUBCOMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
