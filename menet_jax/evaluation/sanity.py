"""The sanity checks of the evaluation report (docs/method.md §6.4).

Comparisons between two attack rows are paired per example on the examples both rows ran on (rows
always run on prefixes of the same test examples), with `stats.paired_difference`, so that mask
noise alone does not raise a WARN. One-sample bounds are `stats.mean_interval` of per-example
rates. Rows are found by the role they play (`rows.Role`), never by their names.

Every check is `{"status": "PASS" | "WARN", "value": ..., "detail": "..."}`.
"""

from __future__ import annotations

import numpy as np

from menet_jax.evaluation.rows import Role
from menet_jax.evaluation.stats import mean_interval, not_greater, same_rate

ZERO_GRADIENT_LIMIT = 0.05  # largest fraction of examples with an exactly-zero BPDA gradient
# An attack meant to succeed (no ME, one fixed mask) passes only when it leaves at most this
# accuracy: a successful untargeted attack reaches ~0%, not chance.
ATTACK_SUCCESS_LIMIT = 0.05


def _check(ok: bool, value, detail: str) -> dict:
    return {"status": "PASS" if ok else "WARN", "value": value, "detail": detail}


def _acc(v: np.ndarray) -> float:
    return round(float(np.mean(v)), 4)


def compute_checks(
    rows: dict[str, np.ndarray],
    *,
    roles: dict,
    headline: np.ndarray | None,
    num_classes: int,
    runtime: dict | None,
    randomness: dict | None,
    randomized: bool,
    skipped_rows: dict[str, str] | None = None,
) -> tuple[dict, dict]:
    """The sanity checks that the rows present allow.

    Args:
      rows: per row name, per-example correctness rates (float [n_row] in [0, 1], or bool) on the
        first n_row examples ("clean" included).
      roles: what each row is to the checks (`rows.Role`, or its value): a row name each for
        REFERENCE (the main white-box PGD row), FGSM, LONG, EOT, GRAYBOX, NO_ME, FIXED_MASK;
        for BLACKBOX the score-based, decision-based and transfer rows; for SWEEP (eps
        multiplier, row name) pairs in increasing multiplier order.
      headline: per-example headline values (the worst case over the counted rows), or None.
      num_classes: for the chance level 1 / num_classes.
      runtime: AutoAttack's runtime checks, {"zero_gradient": fraction of examples whose loss
        gradient is exactly zero, "probability_logits": fraction whose logits look like
        probabilities}, or None when no attack ran.
      randomness: {"pred_varies": fraction, "logits_vary": fraction} over the R clean draws.
      randomized: the model is randomised (an ME-Net, or a user's randomised preprocessing),
        not a deterministic one (the vanilla network).
      skipped_rows: per row not run, why (`rows.Plan.skipped`): a check whose row was
        skipped is skipped with that reason.

    Returns:
      (checks, skipped): checks by name; skipped maps a check's name to why it was not run.
    """
    checks, skipped = {}, {}
    skipped_rows = skipped_rows or {}
    roles = {Role(k): v for k, v in roles.items()}  # a role that is not a Role: ValueError
    rows = dict(rows)
    if headline is not None:
        rows["headline"] = np.asarray(headline)
    main = roles.get(Role.REFERENCE)
    sweep = list(roles.get(Role.SWEEP, []))

    def pair(a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        n = min(rows[a].size, rows[b].size)
        return rows[a][:n], rows[b][:n]

    def need(name: str, *names: str | None) -> bool:
        missing = [str(m) for m in names if m is None or m not in rows]
        if missing:
            skipped[name] = f"rows not run: {', '.join(missing)}"
        return not missing

    def not_above(check: str, a: str, b: str, what: str) -> None:
        """PASS unless row a's accuracy is significantly above row b's (paired)."""
        x, y = pair(a, b)
        checks[check] = _check(
            not_greater(x, y),
            _acc(x) - _acc(y),
            f"{what}: {a} {_acc(x):.4f} vs {b} {_acc(y):.4f} on {x.size} examples",
        )

    _sweep_checks(checks, skipped, rows, sweep, pair, need, 1.0 / num_classes)
    if need("pgd_at_least_fgsm", main, roles.get(Role.FGSM)):
        not_above("pgd_at_least_fgsm", main, roles[Role.FGSM], "PGD must not be weaker than FGSM")
    _blackbox_check(checks, skipped, rows, roles.get(Role.BLACKBOX, []), pair)
    if need("whitebox_at_least_graybox", main, roles.get(Role.GRAYBOX)):
        not_above(
            "whitebox_at_least_graybox",
            main,
            roles[Role.GRAYBOX],
            "the same PGD through ME must not be weaker than on the bare network (else the "
            "gradient through ME is poor)",
        )

    def row_skipped(check: str, role: Role, *names: str) -> bool:
        """The check's row (or its kind, `names`) was not planned: skip the check with its
        reason."""
        if roles.get(role) is not None:
            return False
        why = [name for name in names if name in skipped_rows]
        if why:
            skipped[check] = f"row {why[0]} skipped: {skipped_rows[why[0]]}"
        elif not randomized:
            skipped[check] = "not an ME-Net (me.method=none)"
        else:
            return False  # need() names the missing row
        return True

    for check, role, row, what in (
        ("no_me_attack_succeeds", Role.NO_ME, "no_me_pgd",
         "the same PGD on the bare network, judged bare"),
        ("fixed_mask_attack_succeeds", Role.FIXED_MASK, "fixed_mask_pgd",
         "PGD and judging with one fixed mask"),
    ):  # fmt: skip
        if row_skipped(check, role, row):
            continue
        if need(check, roles.get(role), main):
            a, b = pair(roles[role], main)
            lo, hi = mean_interval(a)
            checks[check] = _check(
                _acc(a) <= ATTACK_SUCCESS_LIMIT,
                _acc(a),
                f"{what}: {_acc(a):.4f} (95% CI {lo:.3f}-{hi:.3f}) on {a.size} examples "
                f"(through ME {_acc(b):.4f}); PASS only when the attack leaves at most "
                f"{ATTACK_SUCCESS_LIMIT:.0%}",
            )
    if row_skipped("eot_at_least_bpda", Role.EOT, "bpda_eot", "eot"):
        pass
    elif need("eot_at_least_bpda", roles.get(Role.EOT), main):
        not_above("eot_at_least_bpda", roles[Role.EOT], main, "EOT must not be weaker than BPDA")
    long = roles.get(Role.LONG)
    if long and need("more_steps_not_weaker", long, main):
        not_above("more_steps_not_weaker", long, main, "a longer PGD must not be weaker")
    _runtime_checks(checks, skipped, runtime)
    _randomness_check(checks, skipped, randomness, randomized)
    return checks, skipped


def _sweep_checks(checks, skipped, rows, sweep, pair, need, chance) -> None:
    """eps 0 leaves clean accuracy; accuracy never rises with eps; a large eps reaches chance."""
    names = [name for _, name in sweep]
    zero = [name for mult, name in sweep if mult == 0]
    if zero and need("eps0_unchanged", "clean", zero[0]):
        a, b = pair(zero[0], "clean")
        checks["eps0_unchanged"] = _check(
            same_rate(a, b),
            _acc(a) - _acc(b),
            f"eps=0 accuracy {_acc(a):.4f} vs clean {_acc(b):.4f} on {a.size} examples",
        )
    elif not zero:
        skipped["eps0_unchanged"] = "no eps multiplier 0 among the sweep rows"
    if len(sweep) >= 2 and need("monotone_in_eps", *names):
        bad = []
        for (m0, r0), (m1, r1) in zip(sweep[:-1], sweep[1:], strict=True):
            hi, lo = pair(r1, r0)
            if not not_greater(hi, lo):
                bad.append(f"x{m1:g} > x{m0:g}")
        checks["monotone_in_eps"] = _check(
            not bad,
            [[mult, _acc(rows[name])] for mult, name in sweep],
            "accuracy by eps multiplier never rises significantly"
            + (f"; rises: {', '.join(bad)}" if bad else ""),
        )
    if sweep and need("large_eps_near_chance", names[-1]):
        v = rows[names[-1]]
        lo, hi = mean_interval(v)
        checks["large_eps_near_chance"] = _check(
            lo <= chance,
            _acc(v),
            f"accuracy at eps x{sweep[-1][0]:g} is {_acc(v):.4f} (95% CI {lo:.3f}-{hi:.3f}), "
            f"chance {chance:.3f}",
        )


def _blackbox_check(checks, skipped, rows, blackbox, pair) -> None:
    """No black-box or transfer row beats the white-box worst case (the headline) by more than
    mask noise explains; the examples where it did better are listed per row."""
    present = [name for name in blackbox if name in rows]
    if not present:
        skipped["blackbox_weaker_than_whitebox"] = "no score-, decision-based or transfer rows"
        return
    if "headline" not in rows:
        skipped["blackbox_weaker_than_whitebox"] = "no headline"
        return
    parts, bad, value = [], [], {}
    for name in present:
        wb, bb = pair("headline", name)
        lower = np.flatnonzero(np.asarray(bb, np.float64) < np.asarray(wb, np.float64))
        value[name] = {
            "difference": round(_acc(bb) - _acc(wb), 4),
            "examples_lower": [int(i) for i in lower],
        }
        parts.append(
            f"{name} {_acc(bb):.4f} vs {_acc(wb):.4f} (n={bb.size}; lower on {lower.size})"
        )
        if not not_greater(wb, bb):
            bad.append(name)
    checks["blackbox_weaker_than_whitebox"] = _check(
        not bad,
        value,
        "accuracy against the headline's per-example worst case on the same examples: "
        + "; ".join(parts)
        + (f"; stronger than the white-box rows: {', '.join(bad)}" if bad else "")
        + " (examples_lower: where the row did better than every counted row)",
    )


def _runtime_checks(checks, skipped, runtime) -> None:
    """AutoAttack's runtime checks: gradients that are exactly zero, logits that are
    probabilities (a softmax output flattens cross-entropy gradients)."""
    if runtime is None:
        skipped["zero_gradient"] = skipped["logits_not_probabilities"] = "no attack rows run"
        return
    zero = runtime["zero_gradient"]
    checks["zero_gradient"] = _check(
        zero <= ZERO_GRADIENT_LIMIT,
        round(zero, 4),
        f"fraction of clean examples whose white-box loss gradient is exactly zero "
        f"(limit {ZERO_GRADIENT_LIMIT})",
    )
    probs = runtime["probability_logits"]
    checks["logits_not_probabilities"] = _check(
        probs == 0,
        round(probs, 4),
        "fraction of clean examples whose logits are non-negative, at most 1 and sum to 1 "
        "(a model that outputs probabilities; attack its logits instead)",
    )


def _randomness_check(checks, skipped, randomness, randomized) -> None:
    """A randomised model's (an ME-Net's) draws differ; a deterministic one's never do."""
    if randomness is None:
        skipped["randomness"] = "clean row not run"
        return
    if randomized:
        ok = randomness["logits_vary"] > 0.5
        rule = "randomised (ME-Net): logits must differ between draws for most examples"
    else:
        ok = randomness["logits_vary"] == 0 and randomness["pred_varies"] == 0
        rule = "deterministic (vanilla): every draw must give the same logits"
    checks["randomness"] = _check(
        ok,
        randomness["pred_varies"],
        f"fraction of examples whose prediction varies over the R draws "
        f"{randomness['pred_varies']:.4f}, whose logits vary {randomness['logits_vary']:.4f}"
        f" ({rule})",
    )
