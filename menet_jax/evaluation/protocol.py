"""How a randomised model is judged (docs/method.md §6): rates, the vote, and the headline.

Every attack row is judged on fresh mask draws that its attack never saw, in two independent
sets: R *measurement* draws and R *selection* draws. Per example, the fraction of measurement
draws that classify it correctly estimates its single-mask accuracy (the paper's and Tramer et
al.'s "one fresh mask per example"); a row's figure is the mean over examples, with a 95% interval
(`row_figures`). The majority over the R measurement draws is a different classifier, a vote, and
is reported beside it as such.

The headline is the per-example worst case over the counted rows (and over each row's restarts) on
the examples every counted row covered. The minimum of noisy estimates is biased low, so each
example's worst candidate is chosen on the selection draws and its rate is measured on the
measurement draws, which are independent of the choice (`headline`): on rows of equal strength
the estimate is unbiased, while a minimum over the same draws is not.
"""

from __future__ import annotations

import numpy as np

from menet_jax.evaluation.stats import majority, mean_interval, wilson


def split_draws(draws: np.ndarray, R: int) -> dict[str, list[np.ndarray]]:
    """A row's judging draws bool [restarts, 2R, n] as {"selection": [bool [R, n]] per restart
    (draws R..2R-1), "measurement": [bool [R, n]] per restart (draws 0..R-1)} (§6.2)."""
    draws = np.asarray(draws)
    return {"selection": list(draws[:, R:]), "measurement": list(draws[:, :R])}


def rates(correct: np.ndarray) -> np.ndarray:
    """Per-example fraction of draws correct: bool [R, n] -> float64 [n]."""
    correct = np.asarray(correct, bool)
    if correct.ndim != 2 or correct.shape[0] == 0:
        raise ValueError(f"correct must be [R, n] with R >= 1, got shape {correct.shape}.")
    return correct.mean(axis=0, dtype=np.float64)


def worst_candidate(selection: list[np.ndarray], measurement: list[np.ndarray]) -> dict:
    """Per example, the candidate of lowest selection rate, measured on the measurement draws.

    Args:
      selection: per candidate (a row, or one restart of a row), bool [R_s, n].
      measurement: per candidate, bool [R_m, n] on draws independent of the selection draws.

    With few draws many candidates tie on an example (all fooled it on every selection draw, or
    none did); a tie goes to the candidate that is strongest over all examples on the selection
    draws (lowest mean selection rate; then the first). Every choice uses selection draws only,
    so the measured values stay independent of it.

    Returns:
      {"values": float [n] (the chosen candidate's measured rate per example), "choice": int [n]
      (the index of the chosen candidate)}.
    """
    if not selection or len(selection) != len(measurement):
        raise ValueError("selection and measurement need one entry per candidate.")
    sel = np.stack([rates(s) for s in selection])  # [K, n]
    meas = np.stack([rates(m) for m in measurement])
    if sel.shape != meas.shape:
        raise ValueError(f"selection {sel.shape} and measurement {meas.shape} differ in shape.")
    order = np.argsort(sel.mean(axis=1), kind="stable")  # strongest candidate first
    choice = order[np.argmin(sel[order], axis=0)]
    return {"values": meas[choice, np.arange(meas.shape[1])], "choice": choice}


def headline(rows: dict[str, dict]) -> dict:
    """The per-example worst case over counted rows, on the examples all of them covered.

    Args:
      rows: per counted row name, {"selection": [bool [R_s, n_row]] and "measurement":
        [bool [R_m, n_row]]}, one array per restart; rows run on prefixes of the same examples.

    Returns:
      {"accuracy", "interval", "n", "rows", "values" (float [n]), "decided_by" (row name per
      example: the row whose candidate was chosen), "restart" (int [n]: which of that row's
      restarts)}.
    """
    if not rows:
        raise ValueError("the headline needs at least one counted row.")
    names = sorted(rows)
    n = min(r["measurement"][0].shape[1] for r in rows.values())
    selection, measurement, owner, restart = [], [], [], []
    for name in names:
        pairs = zip(rows[name]["selection"], rows[name]["measurement"], strict=True)
        for r, (s, m) in enumerate(pairs):
            selection.append(np.asarray(s)[:, :n])
            measurement.append(np.asarray(m)[:, :n])
            owner.append(name)
            restart.append(r)
    best = worst_candidate(selection, measurement)
    lo, hi = mean_interval(best["values"])
    return {
        "accuracy": round(float(best["values"].mean()), 4),
        "interval": [round(lo, 4), round(hi, 4)],
        "n": int(n),
        "rows": names,
        "values": best["values"],
        "decided_by": [owner[c] for c in best["choice"]],
        "restart": np.array([restart[c] for c in best["choice"]], np.int64),
    }


def row_figures(selection: list[np.ndarray], measurement: list[np.ndarray]) -> dict:
    """A row's figures: expected single-mask accuracy (worst restart per example, selected on the
    selection draws), its interval, and the majority vote of the first restart's measurement
    draws (labelled a vote) with its Wilson interval. Returns per-example `values` and `restart`
    (the restart chosen per example) too."""
    best = worst_candidate(selection, measurement)
    lo, hi = mean_interval(best["values"])
    vote = majority(measurement[0]) if len(measurement) == 1 else None
    out = {
        "accuracy": round(float(best["values"].mean()), 4),
        "interval": [round(lo, 4), round(hi, 4)],
        "values": best["values"],
        "restart": best["choice"],
    }
    if vote is not None:
        out["vote_accuracy"] = round(float(vote.mean()), 4)
        v_lo, v_hi = wilson(int(vote.sum()), int(vote.size))
        out["vote_interval"] = [round(v_lo, 4), round(v_hi, 4)]
    return out
