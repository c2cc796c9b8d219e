"""The sanity checks of the evaluation report (docs/method.md §6.4).

Comparisons between two attack rows are paired per example on the examples both rows ran on (rows
always run on prefixes of the same test examples), with `stats.paired_difference`, so that mask
noise alone does not raise a WARN. One-sample bounds use the Wilson score interval.

Every check is `{"status": "PASS" | "WARN", "value": ..., "detail": "..."}`.
"""

from __future__ import annotations

import numpy as np

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
    main_pgd: str,
    sweep: list[tuple[float, str]],
    num_classes: int,
    blackbox: list[str],
    zero_gradient: float | None,
    randomness: dict | None,
    uses_me: bool,
) -> tuple[dict, dict]:
    """The sanity checks that the rows present allow.

    Args:
      rows: per row name, per-example correctness rates (float [n_row] in [0, 1], or bool) on the
        first n_row examples ("clean" included).
      main_pgd: name of the main white-box PGD row.
      sweep: (eps multiplier, row name) in increasing multiplier order.
      num_classes: for the chance level 1 / num_classes.
      blackbox: names of black-box / gray-box / transfer rows to compare with `main_pgd`.
      zero_gradient: fraction of examples whose BPDA gradient is exactly zero, or None.
      randomness: {"pred_varies": fraction, "logits_vary": fraction} over the R clean draws.
      uses_me: the model is an ME-Net (randomised), not the vanilla network.

    Returns:
      (checks, skipped): checks by name; skipped maps a check's name to why it was not run.
    """
    checks, skipped = {}, {}
    chance = 1.0 / num_classes

    def pair(a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        n = min(rows[a].size, rows[b].size)
        return rows[a][:n], rows[b][:n]

    def need(name: str, *names: str) -> bool:
        missing = [m for m in names if m not in rows]
        if missing:
            skipped[name] = f"rows not run: {', '.join(missing)}"
        return not missing

    sweep_names = [name for _, name in sweep]
    zero = [name for mult, name in sweep if mult == 0]
    if zero and need("eps0_unchanged", "clean", zero[0]):
        a, b = pair(zero[0], "clean")
        checks["eps0_unchanged"] = _check(
            same_rate(a, b),
            _acc(a) - _acc(b),
            f"eps=0 accuracy {_acc(a):.4f} vs clean {_acc(b):.4f} on {a.size} examples",
        )
    elif not zero:
        skipped["eps0_unchanged"] = "no eps multiplier 0 in eval.eps_multipliers"
    if len(sweep) >= 2 and need("monotone_in_eps", *sweep_names):
        bad, accs = [], []
        for (m0, r0), (m1, r1) in zip(sweep[:-1], sweep[1:], strict=True):
            hi, lo = pair(r1, r0)
            if not not_greater(hi, lo):
                bad.append(f"x{m1:g} > x{m0:g}")
        for mult, name in sweep:
            accs.append([mult, _acc(rows[name])])
        checks["monotone_in_eps"] = _check(
            not bad,
            accs,
            "accuracy by eps multiplier never rises significantly"
            + (f"; rises: {', '.join(bad)}" if bad else ""),
        )
    if sweep and need("large_eps_near_chance", sweep_names[-1]):
        v = rows[sweep_names[-1]]
        lo, hi = mean_interval(v)
        checks["large_eps_near_chance"] = _check(
            lo <= chance,
            _acc(v),
            f"accuracy at eps x{sweep[-1][0]:g} is {_acc(v):.4f} (95% CI {lo:.3f}-{hi:.3f}), "
            f"chance {chance:.3f}",
        )
    if need("pgd_at_least_fgsm", main_pgd, "fgsm"):
        a, b = pair(main_pgd, "fgsm")
        checks["pgd_at_least_fgsm"] = _check(
            not_greater(a, b),
            _acc(a) - _acc(b),
            f"{main_pgd} {_acc(a):.4f} vs fgsm {_acc(b):.4f} on {a.size} examples",
        )
    present = [name for name in blackbox if name in rows]
    if not present:
        skipped["blackbox_weaker_than_whitebox"] = "no black-box, transfer or gray-box rows"
    elif need("blackbox_weaker_than_whitebox", main_pgd):
        parts, bad, value = [], [], {}
        for name in present:
            wb, bb = pair(main_pgd, name)
            value[name] = round(_acc(bb) - _acc(wb), 4)
            parts.append(f"{name} {_acc(bb):.4f} vs {_acc(wb):.4f} (n={bb.size})")
            if not not_greater(wb, bb):
                bad.append(name)
        checks["blackbox_weaker_than_whitebox"] = _check(
            not bad,
            value,
            f"accuracy minus {main_pgd}'s: "
            + "; ".join(parts)
            + (f"; stronger than white-box: {', '.join(bad)}" if bad else ""),
        )
    for check, row, what in (
        ("no_me_attack_succeeds", "no_me_pgd", "the same PGD on the bare network, judged bare"),
        ("fixed_mask_attack_succeeds", "fixed_mask_pgd", "PGD and judging with one fixed mask"),
    ):
        if not uses_me:
            skipped[check] = "not an ME-Net (me.method=none)"
        elif need(check, row, main_pgd):
            a, b = pair(row, main_pgd)
            lo, hi = mean_interval(a)
            checks[check] = _check(
                _acc(a) <= ATTACK_SUCCESS_LIMIT,
                _acc(a),
                f"{what}: {_acc(a):.4f} (95% CI {lo:.3f}-{hi:.3f}) on {a.size} examples "
                f"(through ME {_acc(b):.4f}); PASS only when the attack leaves at most "
                f"{ATTACK_SUCCESS_LIMIT:.0%}",
            )
    if not uses_me:
        skipped["eot_at_least_bpda"] = "not an ME-Net (me.method=none)"
    elif need("eot_at_least_bpda", "bpda_eot", main_pgd):
        a, b = pair("bpda_eot", main_pgd)
        checks["eot_at_least_bpda"] = _check(
            not_greater(a, b),
            _acc(a) - _acc(b),
            f"BPDA+EOT {_acc(a):.4f} vs {main_pgd} {_acc(b):.4f} on {a.size} examples",
        )
    long = [name for name in rows if name.startswith("pgd_long_")]
    if long and need("more_steps_not_weaker", main_pgd):
        a, b = pair(long[0], main_pgd)
        checks["more_steps_not_weaker"] = _check(
            not_greater(a, b),
            _acc(a) - _acc(b),
            f"{long[0]} {_acc(a):.4f} vs {main_pgd} {_acc(b):.4f} on {a.size} examples",
        )
    if zero_gradient is None:
        skipped["zero_gradient"] = "sanity rows not run"
    else:
        checks["zero_gradient"] = _check(
            zero_gradient <= ZERO_GRADIENT_LIMIT,
            round(zero_gradient, 4),
            f"fraction of clean examples whose BPDA loss gradient is exactly zero "
            f"(limit {ZERO_GRADIENT_LIMIT})",
        )
    if randomness is None:
        skipped["randomness"] = "clean row not run"
    else:
        if uses_me:
            ok = randomness["logits_vary"] > 0.5
            rule = "ME-Net: logits must differ between draws for most examples"
        else:
            ok = randomness["logits_vary"] == 0 and randomness["pred_varies"] == 0
            rule = "vanilla: every draw must give the same logits"
        checks["randomness"] = _check(
            ok,
            randomness["pred_varies"],
            f"fraction of examples whose prediction varies over the R draws "
            f"{randomness['pred_varies']:.4f}, whose logits vary {randomness['logits_vary']:.4f}"
            f" ({rule})",
        )
    return checks, skipped
