"""Pictures of a finished evaluation, and its figures in TensorBoard beside the training curves.

  paths = write_figures(report, outdir)          # accuracy_vs_eps.png, rows.png
  log_to_tensorboard(report, workdir, paths)     # WORKDIR/tensorboard, WORKDIR/eval_metrics.jsonl

`report` is the dict written to results.json (`menet_jax.evaluation.report.build` plus the run's
fields added by the suite). Every accuracy is a row's expected single-mask accuracy with its 95%
interval, and the headline is the per-example worst case over the counted rows (docs/method.md
§6): the pictures show those numbers as they are and compute none of their own. Optional fields
(`role`, `vote_accuracy`, `interval`, `num_classes`, a row's eps) may be missing.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections import Counter

import numpy as np

from menet_jax import monitor, paths
from menet_jax.evaluation.rows import Role

DEFAULT_NUM_CLASSES = 10
SWEEP_PREFIX = "sweep_eps_x"
COUNTED_COLOUR = "tab:blue"
DIAGNOSTIC_COLOUR = "tab:gray"
HEADLINE_COLOUR = "tab:red"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _number(v) -> float | None:
    """v as a finite float, or None (missing, None, NaN or not a number)."""
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _eps(entry: dict) -> float | None:
    return _number((entry.get("params") or {}).get("eps"))


def _interval(entry: dict) -> tuple[float, float] | None:
    iv = entry.get("interval")
    if not isinstance(iv, list | tuple) or len(iv) != 2:
        return None
    lo, hi = _number(iv[0]), _number(iv[1])
    return None if lo is None or hi is None else (lo, hi)


def rows(report: dict) -> list[tuple[str, dict]]:
    """(name, entry) of every row with an accuracy: clean first, then the attacks in order."""
    out = []
    if isinstance(report.get("clean"), dict):
        out.append(("clean", report["clean"]))
    out += list((report.get("attacks") or {}).items())
    return [
        (n, e) for n, e in out if isinstance(e, dict) and _number(e.get("accuracy")) is not None
    ]


def is_sweep(name: str, entry: dict) -> bool:
    """A row of the eps sweep: `role` "sweep", or, where the row has no role, a sweep_eps_x name."""
    if "role" in entry:
        return entry["role"] == Role.SWEEP.value
    return name.startswith(SWEEP_PREFIX)


def is_counted(name: str, entry: dict, report: dict) -> bool:
    """Whether the row counts toward the headline (clean: listed in the headline's rows)."""
    if "in_headline" in entry:
        return bool(entry["in_headline"])
    head = report.get("headline") or {}
    if "rows" in head:
        return name in head["rows"]
    return name == "clean"  # clean always counts (docs/method.md §6.2)


def sweep_points(report: dict) -> list[tuple[float, float, tuple[float, float] | None, str]]:
    """(eps, accuracy, interval, name) of the sweep rows with a numeric eps, sorted by eps."""
    pts = []
    for name, entry in (report.get("attacks") or {}).items():
        if not isinstance(entry, dict) or not is_sweep(name, entry):
            continue
        eps, acc = _eps(entry), _number(entry.get("accuracy"))
        if eps is not None and acc is not None:
            pts.append((eps, acc, _interval(entry), name))
    return sorted(pts, key=lambda p: p[0])


def main_eps(report: dict) -> float | None:
    """The eps of the counted rows (the most common one if they differ), None if none has one."""
    found = [
        _eps(e)
        for n, e in (report.get("attacks") or {}).items()
        if isinstance(e, dict) and is_counted(n, e, report) and not is_sweep(n, e)
    ]
    found = [e for e in found if e is not None and e > 0]
    if not found:
        return None
    counts = Counter(found)
    return max(counts, key=lambda e: (counts[e], e))


def num_classes(report: dict) -> int:
    n = _number(report.get("num_classes"))
    return int(n) if n is not None and n >= 2 else DEFAULT_NUM_CLASSES


def _headline(report: dict) -> tuple[float | None, tuple[float, float] | None]:
    head = report.get("headline") or {}
    return _number(head.get("accuracy")), _interval(head)


def _title(report: dict, what: str) -> str:
    parts = [str(report[k]) for k in ("model", "dataset") if report.get(k)]
    run = " on ".join(parts) if parts else "ME-Net evaluation"
    step = f", step {report['step']}" if report.get("step") is not None else ""
    return f"{what}: {run}{step}"


def _errors(points) -> np.ndarray:
    """[2, n] distances below and above each point's accuracy to its interval (0 without one)."""
    out = np.zeros((2, len(points)))
    for i, (_, acc, iv, _) in enumerate(points):
        if iv is not None:
            out[:, i] = max(acc - iv[0], 0.0), max(iv[1] - acc, 0.0)
    return out


def plot_accuracy_vs_eps(report: dict, path: str) -> bool:
    """Robust accuracy against eps over the sweep rows; False (no file) with < 2 sweep points.

    Each point carries its 95% interval; the clean accuracy is the point at eps 0 unless a sweep
    row has eps 0; the headline is a horizontal line with its interval, marked at the main eps.
    """
    pts = sweep_points(report)
    if len(pts) < 2:
        return False
    clean = report.get("clean") or {}
    clean_acc = _number(clean.get("accuracy"))
    with_clean = clean_acc is not None and not any(p[0] == 0 for p in pts)
    if with_clean:
        pts = [(0.0, clean_acc, _interval(clean), "clean")] + pts
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    err = _errors(pts)
    ax.fill_between(x, y - err[0], y + err[1], color=COUNTED_COLOUR, alpha=0.15, lw=0)
    ax.errorbar(
        x, y, yerr=err, fmt="o-", color=COUNTED_COLOUR, capsize=3, label="eps sweep (95% CI)"
    )
    if with_clean:
        ax.plot([0.0], [clean_acc], "s", color="black", ms=7, label="clean (eps 0)", zorder=5)
    for xi, yi in zip(x, y, strict=True):
        ax.annotate(f"{yi:.1%}", (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=7)
    head, head_iv = _headline(report)
    eps0 = main_eps(report)
    if head is not None:
        label = f"headline {head:.1%}" + (f" at eps {eps0:g}" if eps0 is not None else "")
        ax.axhline(head, color=HEADLINE_COLOUR, ls="--", lw=1.2, label=label)
        if head_iv is not None:
            ax.axhspan(*head_iv, color=HEADLINE_COLOUR, alpha=0.08, lw=0)
        if eps0 is not None:
            ax.plot([eps0], [head], "*", color=HEADLINE_COLOUR, ms=14, zorder=6)
    if eps0 is not None:
        ax.axvline(eps0, color=HEADLINE_COLOUR, ls=":", lw=0.8)
    k = num_classes(report)
    ax.axhline(1.0 / k, color="black", ls=":", lw=1.0, label=f"chance (1/{k})")
    ax.set_xlabel("eps (L-inf)")
    ax.set_ylabel("accuracy (expected single mask)")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(left=min(0.0, x.min()) - 0.03 * (np.ptp(x) or 1.0))
    ax.grid(alpha=0.3)
    ax.set_title(_title(report, "Robust accuracy vs eps"), fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    paths.savefig(fig, path, dpi=120)
    plt.close(fig)
    return True


ALL_DRAWS_MARKERS = ("o", "D", "v", "s", "^", "P")


def _all_draws(entry: dict) -> list[tuple[str, float]]:
    """(N, accuracy) of an entry's correct-on-all-N figures (docs/method.md §6.8), if any."""
    found = entry.get("all_draws") if isinstance(entry.get("all_draws"), dict) else {}
    out = [(n, _number((f or {}).get("accuracy"))) for n, f in found.items()]
    return [(n, a) for n, a in out if a is not None]


def _mark_all_draws(ax, report: dict, entries: list[tuple[str, dict]]) -> list:
    """Marks on each row's bar its fraction correct on all N draws, the headline's as dotted
    red lines; returns the legend's handles (none without N-evaluation figures)."""
    from matplotlib.lines import Line2D

    ns = []
    for i, (_, entry) in enumerate(entries):
        for n, acc in _all_draws(entry):
            ns += [] if n in ns else [n]
            marker = ALL_DRAWS_MARKERS[ns.index(n) % len(ALL_DRAWS_MARKERS)]
            ax.plot([acc], [i], marker, color="black", ms=3.5, mfc="white", mew=0.8, zorder=4)
    head = _all_draws(report.get("headline") or {})
    for n, acc in head:  # a dotted line per N, its N's marker on the top edge
        ns += [] if n in ns else [n]
        marker = ALL_DRAWS_MARKERS[ns.index(n) % len(ALL_DRAWS_MARKERS)]
        ax.axvline(acc, color=HEADLINE_COLOUR, ls=":", lw=1.0)
        ax.plot([acc], [1.0], marker, color=HEADLINE_COLOUR, ms=4, mfc="white",
                transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
    handles = [
        Line2D([], [], ls="", marker=ALL_DRAWS_MARKERS[k % len(ALL_DRAWS_MARKERS)],
               color="black", mfc="white", ms=4, label=f"correct on all {n} draws")
        for k, n in enumerate(ns)
    ]  # fmt: skip
    if head:
        text = ", ".join(f"{n}: {acc:.1%}" for n, acc in head)
        handles.append(
            Line2D([], [], color=HEADLINE_COLOUR, ls=":", label=f"headline, all N ({text})")
        )
    return handles


def plot_rows(report: dict, path: str) -> None:
    """Every row side by side: a bar of accuracy with its 95% interval, coloured by whether it
    counts toward the headline, labelled with the accuracy and n; the headline as a line. Where
    the report has them, each counted row's fraction correct on all N draws is marked on its bar
    and the headline's is a dotted line per N (docs/method.md §6.8)."""
    entries = rows(report)
    plt = _pyplot()
    n_rows = max(len(entries), 1)
    fig, ax = plt.subplots(figsize=(8.0, 1.8 + 0.32 * n_rows), layout="constrained")
    names = [n for n, _ in entries]
    acc = np.array([float(e["accuracy"]) for _, e in entries])
    pts = [(0.0, a, _interval(e), n) for a, (n, e) in zip(acc, entries, strict=True)]
    counted = [is_counted(n, e, report) for n, e in entries]
    colours = [COUNTED_COLOUR if c else DIAGNOSTIC_COLOUR for c in counted]
    ypos = np.arange(len(entries))
    ax.barh(
        ypos,
        acc,
        color=colours,
        height=0.7,
        xerr=_errors(pts),
        capsize=2,
        error_kw={"elinewidth": 0.9, "ecolor": "black"},
    )
    for i, (_, entry) in enumerate(entries):
        iv = _interval(entry)
        right = max(acc[i], iv[1] if iv is not None else acc[i])
        n = entry.get("n")
        text = f"{acc[i]:.1%}" + (f"  n={n}" if n is not None else "")
        ax.text(right + 0.01, i, text, va="center", fontsize=7)
    ax.set_yticks(ypos, names, fontsize=8)
    ax.invert_yaxis()  # clean on top, then the attacks in report order
    head, head_iv = _headline(report)
    if head is not None:
        if head_iv is not None:
            ax.axvspan(*head_iv, color=HEADLINE_COLOUR, alpha=0.12, lw=0)
        ax.axvline(head, color=HEADLINE_COLOUR, ls="--", lw=1.2)
    k = num_classes(report)
    ax.axvline(1.0 / k, color="black", ls=":", lw=0.8)
    ax.set_xlim(0.0, 1.22)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("accuracy (expected single mask), whisker: 95% CI")
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=COUNTED_COLOUR, label="counts toward headline"),
        Patch(color=DIAGNOSTIC_COLOUR, label="diagnostic"),
        Line2D([], [], color="black", ls=":", label=f"chance (1/{k})"),
    ]
    if head is not None:
        line = Line2D([], [], color=HEADLINE_COLOUR, ls="--", label=f"headline {head:.1%}")
        handles.insert(2, line)
    handles += _mark_all_draws(ax, report, entries)
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=4)
    ax.set_title(_title(report, "Accuracy per row"), fontsize=10)
    paths.savefig(fig, path, dpi=120)
    plt.close(fig)


def write_figures(report: dict, outdir: str) -> list[str]:
    """Writes the report's PNGs into outdir (created if missing) and returns their paths:
    accuracy_vs_eps.png (only with at least 2 sweep points) and rows.png."""
    paths.makedirs(outdir)
    written = []
    sweep = paths.join(outdir, "accuracy_vs_eps.png")
    if plot_accuracy_vs_eps(report, sweep):
        written.append(sweep)
    table = paths.join(outdir, "rows.png")
    plot_rows(report, table)
    written.append(table)
    return written


def eval_scalars(report: dict) -> dict[str, float]:
    """eval/headline, eval/headline_all_<N> (correct on all N draws, docs/method.md §6.8), then
    eval/<row> for every row with an accuracy (eval/clean first)."""
    out = {}
    head, _ = _headline(report)
    if head is not None:
        out["eval/headline"] = head
    for n, acc in _all_draws(report.get("headline") or {}):
        out[f"eval/headline_all_{n}"] = acc
    for name, entry in rows(report):
        out[f"eval/{name}"] = float(entry["accuracy"])
    return out


def _read_rgb(path: str) -> np.ndarray:
    """A PNG as [H, W, 3] uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(paths.read_bytes(path))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def log_to_tensorboard(report: dict, workdir: str, png_paths: list[str]) -> None:
    """Logs the evaluation at step report["step"] beside training's curves.

    WORKDIR/tensorboard (where `menet_jax.monitor.MetricWriter` writes) gets the scalars of
    `eval_scalars` and each PNG as an image tagged eval/<file name without .png>; one JSON line
    with the step, the time and the same scalars is appended to WORKDIR/eval_metrics.jsonl.
    Call it on process 0 only, as the suite writes results.json.
    """
    step = int(report.get("step") or 0)
    scalars = eval_scalars(report)
    tb = monitor.EventFiles(paths.join(workdir, "tensorboard"), filename_suffix=".eval")
    try:
        for tag, value in scalars.items():
            tb.writer.add_scalar(tag, value, step)
        for path in png_paths:
            tag = "eval/" + os.path.splitext(paths.basename(path))[0]
            tb.writer.add_image(tag, _read_rgb(path), step, dataformats="HWC")
    finally:
        tb.close()
    lines = monitor.JsonLines(paths.join(workdir, "eval_metrics.jsonl"))
    lines.write({"step": step, "time": round(time.time(), 3), **scalars})
    lines.close()
