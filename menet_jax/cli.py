"""The command line: the `menet-jax` console script, and what every entry point shares (one-line
errors, the `--config` flag, and absl flag parsing that ends a config file that cannot be loaded
or a bad `--config.KEY=VALUE` override with one sentence instead of a traceback).

  menet-jax run|train|eval --config=configs/cifar10.py --workdir=DIR [--config.KEY=VALUE ...]
  menet-jax study NAME --config=... --workdir=...      menet-jax bench me|train|attack|grad|eval
  menet-jax convert ...                                 menet-jax fig9 --out fig9.png
  menet-jax crosscheck --workdir=DIR

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


class UsageError(ValueError):
    """A command-line option an entry point cannot run with (one sentence)."""


class Options:
    """The options of an entry point that takes no config file (bench, fig9, crosscheck): absl
    flags in a FlagValues of their own, so entry points imported into one process (the tests, the
    bench dispatcher) neither clash nor keep each other's values.

      opts = Options("python -m menet_jax.figures.fig9", __doc__).define("integer", "size", 32, "")
      args = opts.parse(argv)       # argv without the program name; args.size, args.num_images
    """

    def __init__(self, prog: str, doc: str = ""):
        self.prog, self.doc, self.flag_values = prog, doc, flags.FlagValues()

    def define(self, kind: str, name: str, default, help_string: str = "", **kw) -> Options:
        """`flags.DEFINE_<kind>(name, default, help_string, **kw)` in this entry point's flags."""
        define = getattr(flags, f"DEFINE_{kind}")
        define(name, default, help=help_string or name, flag_values=self.flag_values, **kw)
        return self

    def parse(self, argv: list[str]):
        """The parsed options as attributes (`-` in a name read as `_`); `--help` prints the
        options and exits 0. Raises UsageError, one sentence, on an option it cannot parse."""
        from types import SimpleNamespace

        if "--help" in argv or "-h" in argv:
            print(f"usage: {self.prog} [options]\n\n{self.doc.strip()}\n")
            for name in self._names():
                flag = self.flag_values[name]
                print(f"  --{name}: {flag.help} (default: {flag.default!r})")
            sys.exit(0)
        fv = self.flag_values
        fv.unparse_flags()  # every parse starts from the defaults
        try:
            rest = fv([self.prog, *argv])[1:]
        except flags.UnrecognizedFlagError as e:
            raise UsageError(f"unknown option --{e.flagname} (see --help).") from None
        except flags.Error as e:
            raise UsageError(f"{' '.join(str(e).split())} (see --help).") from None
        if rest:
            raise UsageError(f"unrecognized arguments: {' '.join(rest)} (see --help).")
        return SimpleNamespace(**{n.replace("-", "_"): fv[n].value for n in self._names()})

    def _names(self) -> list[str]:
        own = set(flags.FlagValues())  # absl's own (--flagfile, --undefok)
        return [name for name in self.flag_values if name not in own]


# subcommand -> (module run as __main__, arguments put before the user's, what it does)
SUBCOMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "run": ("menet_jax.main", ("--mode=train_and_eval",), "train, then eval (the default)"),
    "train": ("menet_jax.main", ("--mode=train",), "training (resumes) and clean accuracy"),
    "eval": ("menet_jax.main", ("--mode=eval",), "the attack suite on a workdir's checkpoint"),
    "study": ("menet_jax.study", (), "one of the supplement's studies (--list names them)"),
    "convert": ("menet_jax.convert", (), "import the authors' PyTorch checkpoint"),
    "bench": ("menet_jax.bench", (), "benchmarks: me, train, attack, grad, eval"),
    "fig9": ("menet_jax.figures.fig9", (), "Fig. 9: photos masked and rebuilt by each method"),
    "crosscheck": (
        "menet_jax.evaluation.crosscheck",
        (),
        "an independent adaptive attack against a finished evaluation's headline",
    ),
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
