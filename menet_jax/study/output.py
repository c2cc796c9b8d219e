"""A study's outputs: DIR/NAME.json (the table's data), DIR/NAME.md (the table), DIR/NAME.png.

Every number comes from a point's results.json as `evaluation.evaluate` wrote it (docs/method.md
§6: a row's expected single-mask accuracy with its 95% interval and n; the headline, the
per-example worst case over the point's counted rows); nothing is recomputed here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os

from menet_jax.study import core

MISSING = "—"
NOT_REPORTED = "not reported"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(entry: dict, row: str) -> dict:
    out = {"row": row, "accuracy": entry["accuracy"], "interval": list(entry["interval"])}
    out["n"] = entry.get("n")
    return out


def cell(results: dict, pattern: str, values: dict) -> dict:
    """The figures of the row `pattern` names (formatted with the point's values, then matched
    against the rows in order), or {"row": pattern, "missing": why}."""
    try:
        pattern = pattern.format(**values)
    except (KeyError, IndexError, ValueError):
        pass
    if pattern == "headline":
        return {**_figure(results["headline"], "headline"), "rows": results["headline"]["rows"]}
    if pattern == "clean":
        return _figure(results["clean"], "clean")
    for name, entry in results["attacks"].items():
        if fnmatch.fnmatchcase(name, pattern):
            return _figure(entry, name)
    skipped = results.get("skipped", {}).get("rows", {})
    why = next((w for n, w in skipped.items() if fnmatch.fnmatchcase(n, pattern)), None)
    return {"row": pattern, "missing": why or "not among this point's rows"}


def table(study: core.Study, entries: list[core.Planned], workdir: str) -> list[dict]:
    """One record per point: its values, model, results path, clean, headline and columns."""
    out = []
    for e in entries:
        path = os.path.join(core.point_dir(workdir, e.point.name), "results.json")
        with open(path) as f:
            results = json.load(f)
        values = dict(e.point.values)
        cells = {"clean": cell(results, "clean", values)}
        cells["headline"] = cell(results, "headline", values)
        for col in study.columns:
            cells[col.label] = cell(results, col.row, values)
        out.append({
            "name": e.point.name,
            "values": values,
            "model": f"models/{e.model}",
            "transfer_source": f"models/{e.source}" if e.source else None,
            "results": os.path.relpath(path, workdir),
            "evaluation_seconds": results.get("budgets", {}).get("total_seconds"),
            "adversarially_trained": bool(e.config.adv.enabled),
            "cells": cells,
        })  # fmt: skip
    return out


def _pct(c: dict) -> str:
    if "missing" in c:
        return MISSING
    lo, hi = c["interval"]
    return f"{c['accuracy']:.1%} ({lo:.1%}-{hi:.1%}, n {c['n']})"


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def recorded_seconds(workdir: str, entries: list[core.Planned], records: list[dict]) -> dict:
    """The time recorded in the files: each model's training (summary.json) and each point's
    evaluation (results.json), whichever invocation spent it."""
    models = {e.model for e in entries} | {e.source for e in entries if e.source}
    train_s = 0.0
    for h in models:
        with open(os.path.join(core.model_dir(workdir, h), "summary.json")) as f:
            train_s += float(json.load(f).get("total_time_s", 0.0))
    eval_s = sum(float(r.get("evaluation_seconds") or 0.0) for r in records)
    return {
        "models": len(models),
        "training_s": round(train_s, 1),
        "evaluation_s": round(eval_s, 1),
    }


def _header(study: core.Study, base, run: dict, records: list[dict] = ()) -> list[str]:
    adv = bool(base.adv.enabled)
    trained = "adversarially trained ME-Net (adv.enabled)" if adv else "pure ME-Net"
    own = [r["name"] for r in records if r.get("adversarially_trained", adv) != adv]
    if own:  # points whose own overrides turn adversarial training on or off
        trained += f" (but {', '.join(own)}: {'not ' if adv else ''}adversarially trained)"
    lines = [
        f"# {study.title}",
        "",
        f"Command: `{run['command']}`",
        "",
        f"Wall time of this command: {run['wall_time_s']:.0f} s (models trained by it: "
        f"{len(run['models_trained'])}; points evaluated by it: {len(run['points_evaluated'])}; "
        "a resumed run counts only its own time)." + _recorded(run),
        "",
        f"**Paper:** {study.paper}",
        "",
        f"**Here:** {study.ours} Models: {trained}, {base.model} on {base.dataset}.",
    ]
    if study.paper_adversarial and not adv:
        lines += ["", "The paper used adversarially trained models for this study; at the demo "
                  "scale adversarial training barely trains on this CPU, so this run uses pure "
                  "ME-Net. Pass a config with adv.enabled (e.g. `configs/mnist_demo.py:adv`) "
                  "for the paper's setting."]  # fmt: skip
    return lines


def _recorded(run: dict) -> str:
    t = run.get("recorded")
    if not t:
        return ""
    return (f" Recorded in the files: training {t['training_s']:.0f} s ({t['models']} models), "
            f"evaluation {t['evaluation_s']:.0f} s.")  # fmt: skip


def markdown(study, base, run: dict, records: list[dict]) -> str:
    """NAME.md: the header, the table (one row per point) and how to read it."""
    keys = list(dict.fromkeys(k for r in records for k in r["values"]))
    labels = ["clean", "headline"] + [c.label for c in study.columns]
    lines = _header(study, base, run, records) + [""]
    lines.append("| point | " + " | ".join(keys + labels) + " |")
    lines.append("|---" * (1 + len(keys) + len(labels)) + "|")
    for r in records:
        vals = [_value(r["values"].get(k, "")) for k in keys]
        cells = [_pct(r["cells"][lab]) for lab in labels]
        lines.append(
            f"| [{r['name']}]({r['results'][:-5]}.md) | " + " | ".join(vals + cells) + " |"
        )
    for q in study.quoted:
        vals = [q.cells.get(k, "") for k in keys]
        cells = [q.cells.get(lab, NOT_REPORTED) for lab in labels]
        lines.append(f"| {q.name} (quoted) | " + " | ".join(vals + cells) + " |")
    heads = {tuple(r["cells"]["headline"]["rows"]) for r in records}
    rows_text = "; ".join(", ".join(h) for h in sorted(heads))
    lines += [
        "",
        "Each cell: the row's expected single-mask accuracy (per example, the fraction of fresh "
        "masks the attack never saw that classify it correctly, averaged), its 95% interval and "
        "n (docs/method.md §6). **headline**: per example the worst case over the point's "
        f"counted rows ({rows_text}), selected and measured on independent draws. Columns: "
        + "; ".join(f"{c.label} = `{c.row}`" for c in study.columns)
        + f". {MISSING}: the row does not apply to that point (see its results.md).",
    ]
    if study.quoted:
        lines += ["", "Rows marked (quoted) are the paper's figures, not run here and not "
                  "comparable cell by cell (the paper's models, training and attack code; "
                  f"{NOT_REPORTED}: the paper gives none): " + "; ".join(
                      f"{q.name}, {q.source}" for q in study.quoted) + "."]  # fmt: skip
    if run["overrides"]:
        lines += ["", "Command-line overrides: " + ", ".join(
            f"`{k}={v!r}`" for k, v in run["overrides"].items()) + "."]  # fmt: skip
    lines += ["", f"![{study.name}]({study.name}.png)"]
    return "\n".join(lines) + "\n"


def _picture_markdown(study, base, run: dict, pictures) -> str:
    header, rows, _ = pictures
    lines = _header(study, base, run) + ["", f"![{study.name}]({study.name}.png)", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---" * len(header) + "|")
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write(study, base, entries, workdir: str, run: dict, *, pictures=None) -> dict:
    """Writes DIR/NAME.json, NAME.md and (for evaluated studies) NAME.png; returns the JSON."""
    out = {"study": study.name, "title": study.title, **run}
    if pictures is None:
        records = table(study, entries, workdir)
        run = {**run, "recorded": recorded_seconds(workdir, entries, records)}
        out["recorded"] = run["recorded"]
        out["columns"] = {c.label: c.row for c in study.columns}
        out["points"] = records
        out["quoted"] = [dataclasses.asdict(q) for q in study.quoted]
        text = markdown(study, base, run, records)
        out["png"] = plot(study, records, os.path.join(workdir, f"{study.name}.png"))
    else:
        out["points"] = [{"name": e.point.name, "model": f"models/{e.model}"} for e in entries]
        out["data"] = pictures[2]
        out["png"] = f"{study.name}.png"
        text = _picture_markdown(study, base, run, pictures)
    for suffix, content in ((".json", json.dumps(out, indent=2)), (".md", text)):
        path = os.path.join(workdir, study.name + suffix)
        with open(path + ".tmp", "w") as f:
            f.write(content)
        os.replace(path + ".tmp", path)
    return out


# ---------------------------------------------------------------------------------------------
# Figures


def _errorbar(ax, xs, cells, **kw):
    ok = [(x, c) for x, c in zip(xs, cells, strict=True) if "missing" not in c]
    if not ok:
        return
    xs = [x for x, _ in ok]
    ys = [c["accuracy"] for _, c in ok]
    err = [[c["accuracy"] - c["interval"][0] for _, c in ok],
           [c["interval"][1] - c["accuracy"] for _, c in ok]]  # fmt: skip
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, **kw)


def _lines(plt, spec: core.Lines, records: list[dict]):
    panels = (
        list(dict.fromkeys(r["values"].get(spec.panel) for r in records)) if spec.panel else [None]
    )
    panels = [p for p in panels if p is not None] or [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        mine = [r for r in records if spec.panel is None or r["values"].get(spec.panel) == panel]
        on_axis = [r for r in mine if isinstance(r["values"].get(spec.x), int | float)]
        groups = list(dict.fromkeys(r["values"].get(spec.group) for r in on_axis))
        for g in groups:
            rs = sorted((r for r in on_axis if r["values"].get(spec.group) == g),
                        key=lambda r: r["values"][spec.x])  # fmt: skip
            for col in spec.columns:
                label = col if spec.group is None else f"{col}, {spec.group} {_value(g)}"
                _errorbar(ax, [r["values"][spec.x] for r in rs], [r["cells"][col] for r in rs],
                          label=label)  # fmt: skip
        refs = [r for r in records if r not in on_axis and spec.x not in r["values"]]
        for r in refs:
            # One dashed line per distinct level, naming every column at it (labels at one
            # level would print over each other).
            levels: dict[float, list[str]] = {}
            for col in spec.columns:
                c = r["cells"][col]
                if "missing" not in c:
                    levels.setdefault(round(c["accuracy"], 3), []).append(col)
            for level, cols in levels.items():
                ax.axhline(level, ls="--", lw=1, color="gray")
                ax.annotate(f"{r['name']}: {', '.join(cols)}", (0.01, level), fontsize=7,
                            xycoords=("axes fraction", "data"), va="bottom")  # fmt: skip
        if spec.logx:
            ax.set_xscale("log")
        ax.set_xlabel(spec.xlabel or spec.x)
        ax.set_ylabel("accuracy (95% interval)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if panel is not None:
            ax.set_title(f"{spec.panel} {_value(panel)}")
        ax.legend(fontsize=7)
    return fig


def _bars(plt, spec: core.Bars, records: list[dict]):
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.6 * len(records) * len(spec.columns))), 4.2))
    width = 0.8 / len(spec.columns)
    for j, col in enumerate(spec.columns):
        labelled = False  # the first point that has the column labels it (not always the first)
        for i, r in enumerate(records):
            c = r["cells"][col]
            if "missing" in c:
                continue
            lo, hi = c["interval"]
            ax.bar(i + j * width, c["accuracy"], width,
                   yerr=[[c["accuracy"] - lo], [hi - c["accuracy"]]], capsize=2,
                   color=f"C{j}", label=None if labelled else col)  # fmt: skip
            labelled = True
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(records))])
    ax.set_xticklabels([r["name"] for r in records], fontsize=8)
    ax.set_ylabel("accuracy (95% interval)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot(study: core.Study, records: list[dict], path: str) -> str | None:
    """Draws the study's `plot` to `path` (PNG); returns its file name, or None without one."""
    if study.plot is None:
        return None
    plt = pyplot()
    draw = _lines if isinstance(study.plot, core.Lines) else _bars
    fig = draw(plt, study.plot, records)
    fig.suptitle(study.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)
