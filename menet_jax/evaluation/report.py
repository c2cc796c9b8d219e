"""results.md: the evaluation report as a paper-style table, then the checks and the budgets."""

from __future__ import annotations

import json


def _fmt(v) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(v) -> str:
    return "" if v is None else f"{v:.2%}"


def write_markdown(report: dict, path: str) -> None:
    """Writes the report as a paper-style table of rows, then the checks, then the budgets."""
    top5 = "top5" in report["clean"]
    me = report.get("me", {})
    h = report["headline"]
    head_top5 = f"; top-5 {h['top5']['accuracy']:.2%}" if "top5" in h else ""
    lines = [
        f"# ME-Net evaluation of `{report.get('workdir', '')}`",
        "",
        f"**Headline robust accuracy: {h['accuracy']:.2%}** (95% CI {h['interval'][0]:.1%}-"
        f"{h['interval'][1]:.1%}) on {h['n']} test examples{head_top5}: per example the worst "
        f"case over the counted rows ({', '.join(h['rows'])}) and their restarts, chosen on "
        "selection draws and measured on independent fresh draws (docs/method.md §6.2). Rows "
        "that decided it: " + ", ".join(f"{k} {v}" for k, v in h["decided_by"].items()) + ".",
        "",
        f"Model {report.get('model')} on {report.get('dataset')}, step {report.get('step')}; "
        f"ME {me.get('method')} at inference p {_fmt(me.get('inference_p'))}. Each row's "
        f"accuracy is the expected single-mask accuracy: per example the fraction of "
        f"R = {report.get('eval_keys')} fresh mask draws (never seen by the attack) that classify "
        "it correctly, averaged over examples, as the paper and Tramer et al. judge. The Vote "
        "column is a different classifier: the majority over the same R masks.",
        "",
        "| Attack | Threat model | eps | Steps | Step size | Restarts | Samples | Examples "
        "| Accuracy | 95% CI | Vote |" + (" Top-5 |" if top5 else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if top5 else ""),
    ]
    clean = report["clean"]
    lo, hi = clean["interval"]
    lines.append(
        f"| clean | none | 0 | | | | | {clean['n']} | {clean['accuracy']:.2%} "
        f"| {lo:.1%}-{hi:.1%} | {_pct(clean.get('vote_accuracy'))} |"
        + (f" {clean['top5']:.2%} |" if top5 else "")
    )
    for name, a in report["attacks"].items():
        p = a["params"]
        samples = p.get("eot_samples", p.get("samples", p.get("votes", "")))
        label = name if a.get("in_headline", True) else f"{name} *"
        lo, hi = a["interval"]
        extra = ""
        if "unbounded_success_rate" in a:
            extra = (
                f" (unbounded success {a['unbounded_success_rate']:.1%}, median L-inf "
                f"{_fmt(a['median_linf_distance'])})"
            )
        lines.append(
            f"| {label} | {a['threat']}{extra} | {_fmt(p.get('eps'))} | {_fmt(p.get('steps'))} "
            f"| {_fmt(p.get('step_size'))} | {_fmt(p.get('restarts'))} | {_fmt(samples)} "
            f"| {p['examples']} | {a['accuracy']:.2%} | {lo:.1%}-{hi:.1%} "
            f"| {_pct(a.get('vote_accuracy'))} |" + (f" {a['top5']:.2%} |" if top5 else "")
        )
    lines += [
        "",
        "\\* diagnostic, sanity or inference-option row, not counted in the headline.",
    ]
    lines += [
        "",
        "## Sanity checks",
        "",
        "| Check | Status | Value | Detail |",
        "|---|---|---|---|",
    ]
    for name, c in report["checks"].items():
        value = json.dumps(c["value"]) if not isinstance(c["value"], float) else _fmt(c["value"])
        lines.append(f"| {name} | {c['status']} | {value} | {c['detail']} |")
    skipped = report.get("skipped", {})
    for kind in ("rows", "checks"):
        for name, why in skipped.get(kind, {}).items():
            lines.append(f"\nSkipped {kind[:-1]} `{name}`: {why}.")
    b = report["budgets"]
    lines += [
        "",
        "## Budgets",
        "",
        f"{b['examples']} test examples, {b['eval_keys']} evaluation draws, "
        f"{b.get('total_seconds', 0):.0f} s in all.",
        "",
        "| Row | Examples | Steps | Samples | Seconds |",
        "|---|---|---|---|---|",
    ]
    for name, r in b["rows"].items():
        lines.append(
            f"| {name} | {r['examples']} | {r['steps']} | {r['samples']} | {r['seconds']:.1f} |"
        )
    if "zero_gradient" in b:
        z = b["zero_gradient"]
        lines.append(f"| zero-gradient check | {z['examples']} | | | {z['seconds']:.1f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
