"""The N-evaluation: the fraction of examples classified correctly on all of N fresh draws.

A row's figure (`protocol`) is the expected single-draw accuracy: one fresh mask per example. An
attacker who may submit the same adversarial image N times, or a deployment that classifies N
frames of one scene, meets N masks and is fooled once any of them fools it (Tramer et al. 2020;
DiffHammer, Wang et al. 2024). So each counted row's images (clean included) are judged again on
max(N) further fresh draws (`eval.n_eval`, default 1, 5, 20), drawn from their own stream
(`menet_jax.rng.ALL_DRAWS` under the judging root) that neither the attacks nor the 2R judging
draws use. Per example, the candidate is the one the figure already chose on the selection
draws: the worst restart for a row, the worst (row, restart) for the headline (docs/method.md
§6.2-6.3). `all_correct` flags, per N, whether that candidate's image was correct on every one
of the first N draws; a figure is the mean of the flags with a Wilson interval. N = 1 is a 0/1
single-draw estimate whose expectation is the single-draw accuracy; the fraction never rises
with N. A deterministic model's draws are all alike: its first judging draw stands for every
draw, and every all-N figure equals the single-draw one (docs/method.md §6.8).
"""

from __future__ import annotations

import numpy as np

from menet_jax.evaluation.stats import wilson


def all_correct(draws: np.ndarray, ns) -> np.ndarray:
    """Per N, correct on every one of the first N draws: bool [M, n] -> bool [len(ns), n]."""
    draws = np.asarray(draws, bool)
    if draws.ndim != 2 or (ns and max(ns) > draws.shape[0]):
        raise ValueError(f"draws must be [M, n] with M >= max(N) = {max(ns, default=0)}, got "
                         f"shape {draws.shape}")  # fmt: skip
    running = np.logical_and.accumulate(draws, axis=0)  # [M, n]: correct on draws 0..m
    return np.stack([running[n - 1] for n in ns]) if ns else np.zeros((0, draws.shape[1]), bool)


def chosen(draws: np.ndarray, restart: np.ndarray, ns) -> np.ndarray:
    """All-N flags of the restart chosen per example: draws bool [restarts, M, n], restart int
    [n] -> bool [len(ns), n]."""
    draws, restart = np.asarray(draws, bool), np.asarray(restart)
    n = restart.shape[0]
    return all_correct(draws[restart, :, np.arange(n)].T, ns)


def figures(flags: np.ndarray, ns) -> dict:
    """{str(N): {"accuracy", "interval" (Wilson, ~95%), "n"}} of flags bool [len(ns), n]."""
    out = {}
    for n_draws, f in zip(ns, np.asarray(flags, bool), strict=True):
        lo, hi = wilson(int(f.sum()), int(f.size))
        out[str(n_draws)] = {
            "accuracy": round(float(f.mean()), 4) if f.size else None,
            "interval": [round(lo, 4), round(hi, 4)],
            "n": int(f.size),
        }
    return out


def add_figures(plan, results, entries: dict, head: dict, arrays: dict, *, decided, restart):
    """Adds the all-N figures to the report being built (`report.build`).

    Args:
      plan: the `rows.Plan` that was run (its `ev.n_eval`, its counted rows, its target).
      results: per row, `suite.run_row`'s output with "figures" (its chosen `restart` per example)
        and, for a counted row, "all_draws" (bool [restarts, max(N), n], `suite.all_draws`).
      entries: per row, its results.json entry: gets "all_draws" ({str(N): figure}).
      head: the headline's entry: gets "all_draws" for the candidate it chose per example.
      arrays: results.npz's arrays: gets "all_draws/<row>" and "all_draws/headline", bool
        [len(N), n] per example.
      decided: per headline example, the counted row it was decided by.
      restart: per headline example, the restart of that row.

    Returns:
      results.json's "n_eval" ({"n": N's, "draws": max(N), "randomized": fresh draws or the
      judging draw repeated}) or None when eval.n_eval is empty or a counted row lacks draws.
    """
    ns = tuple(int(n) for n in ((plan.ev or {}).get("n_eval") or ()))
    counted = [row.name for row in plan.rows if row.counted]
    if not ns or not counted or any("all_draws" not in results[name] for name in counted):
        return None
    for name in counted:
        flags = chosen(results[name]["all_draws"], results[name]["figures"]["restart"], ns)
        entries[name]["all_draws"] = figures(flags, ns)
        arrays[f"all_draws/{name}"] = flags
    per_example = np.zeros((max(ns), head["n"]), bool)  # the chosen candidate's draws
    for i, (name, r) in enumerate(zip(decided, restart, strict=True)):
        per_example[:, i] = results[name]["all_draws"][r, : max(ns), i]
    flags = all_correct(per_example, ns)
    head["all_draws"] = figures(flags, ns)
    arrays["all_draws/headline"] = flags
    return {"n": list(ns), "draws": max(ns), "randomized": bool(plan.target.randomized)}


def _cell(figure: dict | None) -> str:
    if not figure or figure.get("accuracy") is None:
        return ""
    lo, hi = figure["interval"]
    return f"{figure['accuracy']:.2%} ({lo:.1%}-{hi:.1%})"


def headline_sentence(report: dict) -> list[str]:
    """results.md's line under the headline: the headline on all N draws (none when off)."""
    h, meta = report["headline"], report.get("n_eval")
    if not meta or "all_draws" not in h:
        return []
    parts = [f"N = {n}: {_cell(h['all_draws'][str(n)])}" for n in meta["n"]]
    return [
        "Correct on all N fresh draws of the same image (an attacker who resubmits it N times, "
        "a stream of N frames; docs/method.md §6.8): " + "; ".join(parts) + ".",
        "",
    ]


def markdown_table(report: dict) -> list[str]:
    """results.md's section of all-N figures: the headline and every counted row (none when
    off)."""
    meta = report.get("n_eval")
    if not meta:
        return []
    ns = meta["n"]
    how = (
        f"{meta['draws']} further fresh draws per example that neither the attack nor the "
        "judging draws saw"
        if meta["randomized"]
        else "a deterministic model: every draw is the same, so the judging draw stands for all"
    )
    lines = [
        "",
        "## Correct on all N draws",
        "",
        "Per example the image the figure chose (the worst restart of a row, the worst row and "
        f"restart for the headline) counts only if it is classified correctly on all of N draws "
        f"({how}). Single draw: the expected accuracy against one fresh mask (the Accuracy "
        "column); all N: the robust accuracy against an attacker who may resubmit the same "
        "image N times. Wilson 95% intervals.",
        "",
        "| Row | Examples | Single draw | " + " | ".join(f"All {n}" for n in ns) + " |",
        "|---" * (3 + len(ns)) + "|",
    ]
    entries = [("**headline**", report["headline"])]
    entries += [("clean", report["clean"])] + list(report["attacks"].items())
    for name, e in entries:
        if "all_draws" not in e:
            continue
        cells = [_cell(e["all_draws"].get(str(n))) for n in ns]
        lines.append(f"| {name} | {e['n']} | {e['accuracy']:.2%} | " + " | ".join(cells) + " |")
    return lines
