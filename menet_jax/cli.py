"""What the command-line entry points share: one-line errors and absl flag parsing that ends a
bad `--config.KEY=VALUE` override with one sentence instead of a traceback."""

from __future__ import annotations

import sys

from absl import flags


def fail(message: str) -> int:
    """Prints `error: MESSAGE` on stderr; returns the exit code 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1


def parse_flags(argv):
    """absl's flag parsing (`app.run(..., flags_parser=parse_flags)`), with every error one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(fail(str(e)))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        sys.exit(
            fail(
                f"a --config override could not be applied ({' '.join(str(e).split())}): "
                f"check the key and its type in {', '.join(bad) or 'the overrides'}; the "
                "evaluation's budgets live in sections such as --config.eval.pgd.steps"
            )
        )
