"""The command line: the `menet-jax` console script, and what every entry point shares (one-line
errors, the `--config` flag, and absl flag parsing that ends a config file that cannot be loaded
or a bad `--config.KEY=VALUE` override with one sentence instead of a traceback).

  menet-jax run|train|eval --config=configs/cifar10.py --workdir=DIR [--config.KEY=VALUE ...]
  menet-jax study NAME --config=... --workdir=...      menet-jax bench me|train|attack|grad|eval
  menet-jax convert ...                                 menet-jax fig9 --out fig9.png

Each subcommand is exactly `python -m MODULE` with the same arguments (`run`, `train` and `eval`
are `python -m menet_jax.main` with `--mode` train_and_eval, train, eval).
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys

from absl import flags
from ml_collections import config_flags

from menet_jax.config import ConfigError, load_config


def fail(message: str) -> int:
    """Prints `error: MESSAGE` on stderr; returns the exit code 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1


class _ConfigFile(flags.ArgumentParser):
    """Parses `--config=path.py[:variant]` with `menet_jax.config.load_config`: a file that
    cannot be loaded is a ConfigError at parse time (ml_collections' own parser defers a missing
    file to the first use of the config and puts a traceback into the message of the others)."""

    def parse(self, argument: str):
        config = load_config(argument)
        if callable(getattr(config, "lock", None)):  # lock_config=True: overrides only
            config.lock()
        return config

    def flag_type(self) -> str:
        return "config object"


def define_config_flag(
    name: str, help_string: str, *, flag_values=flags.FLAGS, sys_argv=None
) -> flags.FlagHolder:
    """`config_flags.DEFINE_config_file(name)` (with its `--NAME.KEY=VALUE` overrides) whose file
    is loaded by `load_config`, so every load error is one sentence (`flag_error`)."""
    holder = config_flags.DEFINE_config_file(
        name, None, help_string, flag_values=flag_values, sys_argv=sys_argv
    )
    flag_values[name].parser = _ConfigFile()
    return holder


def flag_error(e: Exception, argv: list[str]) -> str | None:
    """The one-sentence message of an error of absl flag parsing, or None for one that is not a
    user's (a bug: let its traceback show)."""
    if isinstance(e, flags.Error):
        cause = e.__context__  # absl recasts a parser's ValueError as IllegalFlagValueError
        return str(cause) if isinstance(cause, ConfigError) else " ".join(str(e).split())
    if isinstance(e, AttributeError | KeyError | TypeError | ValueError):
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        return (
            f"a --config override could not be applied ({' '.join(str(e).split())}): "
            f"check the key and its type in {', '.join(bad) or 'the overrides'}; the "
            "evaluation's budgets live in sections such as --config.eval.pgd.steps"
        )
    return None


def parse_flags(argv):
    """absl's flag parsing (`app.run(..., flags_parser=parse_flags)`), with every error one line
    (MENET_DEBUG=1 shows the traceback)."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:
        message = flag_error(e, argv)
        if message is None or os.environ.get("MENET_DEBUG"):
            raise
        sys.exit(fail(message))


# subcommand -> (module run as __main__, arguments put before the user's, what it does)
SUBCOMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "run": ("menet_jax.main", ("--mode=train_and_eval",), "train, then eval (the default)"),
    "train": ("menet_jax.main", ("--mode=train",), "training (resumes) and clean accuracy"),
    "eval": ("menet_jax.main", ("--mode=eval",), "the attack suite on a workdir's checkpoint"),
    "study": ("menet_jax.study", (), "one of the supplement's studies (--list names them)"),
    "convert": ("menet_jax.convert", (), "import the authors' PyTorch checkpoint"),
    "bench": ("menet_jax.bench", (), "benchmarks: me, train, attack, grad, eval"),
    "fig9": ("menet_jax.figures.fig9", (), "Fig. 9: photos masked and rebuilt by each method"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {doc}" for name, (mod, _, doc) in SUBCOMMANDS.items()
             if importlib.util.find_spec(mod) is not None]  # fmt: skip
    return "usage: menet-jax SUBCOMMAND [options]; SUBCOMMAND --help for its options\n" + "\n".join(
        lines
    )


def main(argv: list[str] | None = None) -> int:
    """The `menet-jax` console script: runs the subcommand's module as `python -m` would."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    known = [n for n, (m, _, _) in SUBCOMMANDS.items() if importlib.util.find_spec(m) is not None]
    if name not in known:
        return fail(f"unknown subcommand {name!r}; one of {', '.join(known)} (menet-jax --help)")
    module, before, _ = SUBCOMMANDS[name]
    sys.argv = [f"menet-jax {name}", *before, *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # absl's app.run and the modules' sys.exit(main(...))
        code = e.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    return 0
