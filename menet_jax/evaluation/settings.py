"""The `eval` config: its common keys, one section per kind of row, and their checks.

`config.eval` holds the keys every row shares (`COMMON`: the examples, eps, step size, gradient
rule, restarts, judging draws, the N of the N-evaluation, which kinds run) and one section per
kind of row (`config.eval.pgd.steps`, `config.eval.apgd.eot_samples`, ...), whose keys are
defined with the kind in `menet_jax.evaluation.rows`. `eval_config()` gives the defaults;
`validate_eval` checks every value before any work starts (training calls it too, so a bad
evaluation setting fails before hours of training). Errors are `menet_jax.config.ConfigError`.
"""

from __future__ import annotations

import ml_collections

from menet_jax.config import (
    POSITIVE,
    POSITIVE_INT,
    ConfigError,
    Key,
    check_section,
    is_num,
    optional,
    positive,
    positive_int,
    section,
)
from menet_jax.evaluation.rows import KINDS

GROUPS = tuple(k.name for k in KINDS)


def _n_eval_ok(v) -> bool:
    v = tuple(v) if isinstance(v, tuple | list) else (None,)
    return all(positive_int(n) for n in v) and list(v) == sorted(set(v))


def _allowed_attacks() -> str:
    return f"'all' or a comma-separated subset of {', '.join(GROUPS)}"


COMMON: dict[str, Key] = {
    "num_examples": Key(
        1000,
        "a positive integer or None",
        optional(positive_int),
        "test examples every counted row runs on (the first N); None: the whole test split",
        int,
    ),
    "eps": Key(
        8 / 255,
        "a finite number >= 0",
        lambda v: is_num(v) and v >= 0,
        "L-inf radius of every bounded attack",
    ),
    "step_size": Key(2 / 255, POSITIVE, positive, "PGD step"),
    "gradient": Key(
        "bpda",
        "'bpda' (straight-through) or 'exact'",
        lambda v: v in ("bpda", "exact"),
        "gradient of ME in white-box attacks; the fixed-mask sanity row always uses exact",
    ),
    "restarts": Key(1, POSITIVE_INT, positive_int, "restarts of PGD and APGD rows"),
    "eval_keys": Key(
        5,
        POSITIVE_INT,
        positive_int,
        "R: fresh judging draws that measure (and R more that select; docs/method.md §6)",
    ),
    "n_eval": Key(
        (1, 5, 20),
        "a tuple of strictly increasing positive integers (empty: no N-evaluation)",
        _n_eval_ok,
        "N: report per counted row and headline the fraction correct on all of N further fresh "
        "draws (docs/method.md §6.8)",
    ),
    "attacks": Key(
        "all",
        _allowed_attacks,
        lambda v: _parse(v) is not None,
        "the kinds of rows to run: 'all' or a comma-separated subset",
    ),
}


def eval_config() -> ml_collections.ConfigDict:
    """The defaults of `config.eval`: the common keys and every kind's section."""
    c = section(COMMON)
    for kind in KINDS:
        if kind.keys:
            c[kind.name] = section(kind.keys)
    return c


def _parse(spec) -> set[str] | None:
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if names == ["all"]:
        return set(GROUPS)
    if not names or any(s not in GROUPS for s in names):
        return None
    return set(names) | {"clean"}


def parse_attacks(spec: str) -> set[str]:
    """The kinds of rows named by eval.attacks ('all' or a comma-separated subset)."""
    groups = _parse(spec)
    if groups is None:
        names = [s.strip() for s in str(spec).split(",") if s.strip()]
        unknown = [s for s in names if s not in GROUPS]
        raise ConfigError(
            f"config.eval.attacks={spec!r} names unknown kinds {unknown}; allowed: "
            + _allowed_attacks()
        )
    return groups


def validate_eval(ev: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on the first eval setting that is missing or not allowed."""
    parse_attacks(ev.get("attacks", "all"))
    check_section("eval", ev, COMMON)
    for kind in KINDS:
        if not kind.keys:
            continue
        if kind.name not in ev or not isinstance(ev[kind.name], ml_collections.ConfigDict):
            raise ConfigError(f"config.eval.{kind.name} is missing (a section of {kind.doc})")
        check_section(f"eval.{kind.name}", ev[kind.name], kind.keys)
    known = set(COMMON) | {k.name for k in KINDS if k.keys}
    unknown = sorted(set(ev.keys()) - known)
    if unknown:
        raise ConfigError(
            f"config.eval.{unknown[0]} is not an evaluation key; the keys are "
            f"{', '.join(sorted(known))} (budgets live in their row's section, e.g. "
            "config.eval.pgd.steps)"
        )
