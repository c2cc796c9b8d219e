"""The evaluation report: results.json's content (`build`) and results.md (`write_markdown`).

results.json (schema `RESULTS_SCHEMA_VERSION`) holds the headline, each row's figures with its
interval and vote, the checks and the budgets; results.npz the per-example rates of every row
(test-split order), the headline's per-example values under `headline`, every row's raw judging
draws under `draws/<row>` and the adversarial examples of the rows that decided the headline.
The N-evaluation's figures and flags (correct on all of N fresh draws) come from `n_eval`.
"""

from __future__ import annotations

import json

import numpy as np

from menet_jax import paths
from menet_jax.evaluation import autoattack, n_eval, protocol, sanity
from menet_jax.evaluation.rows import Role

# 2: expected single-mask accuracy, `headline`, results.npz; 3: rows carry their `role`,
# `num_classes`, `resumed_rows`, `budgets.runtime_checks`, results.npz `headline_top5`;
# 4: `inference_overrides` (ME options evaluated otherwise than trained); 5: `n_eval`, the
# headline's and counted rows' `all_draws`, results.npz `all_draws/<row>` (docs/method.md §6.8);
# `autoattack_rand` (AutoAttack's own judging beside the headline, when that row ran; §6.9).
RESULTS_SCHEMA_VERSION = 5


def _fmt(v) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(v) -> str:
    return "" if v is None else f"{v:.2%}"


def _model_line(report: dict, me: dict) -> str:
    user = report.get("user_model")
    if not user:
        return (
            f"Model {report.get('model')} on {report.get('dataset')}, step "
            f"{report.get('step')}; ME {me.get('method')} at inference p "
            f"{_fmt(me.get('inference_p'))}."
        )
    adapted = "; ".join(user["adapted"])
    return (
        f"A user's model (`evaluation.evaluate_model`) with {me.get('method')}; white-box "
        f"gradients {user['gradient']}." + (f" Adapted: {adapted}." if adapted else "")
    )


def write_markdown(report: dict, path: str) -> None:
    """Writes the report as a paper-style table of rows, then the checks, then the budgets."""
    top5 = "top5" in report["clean"]
    me = report.get("me", {})
    h = report["headline"]
    head_top5 = f"; top-5 {h['top5']['accuracy']:.2%}" if "top5" in h else ""
    user = report.get("user_model")
    title = f"Evaluation of `{user['name']}`" if user else "ME-Net evaluation"
    lines = [
        f"# {title} of `{report.get('workdir', '')}`",
        "",
        f"**Headline robust accuracy: {h['accuracy']:.2%}** (95% CI {h['interval'][0]:.1%}-"
        f"{h['interval'][1]:.1%}) on {h['n']} test examples{head_top5}: per example the worst "
        f"case over the counted rows ({', '.join(h['rows'])}) and their restarts, chosen on "
        "selection draws and measured on independent fresh draws (docs/method.md §6.2). Rows "
        "that decided it: " + ", ".join(f"{k} {v}" for k, v in h["decided_by"].items()) + ".",
        "",
        *n_eval.headline_sentence(report),
        _model_line(report, me) + " Each row's "
        f"accuracy is the expected single-mask accuracy: per example the fraction of "
        f"R = {report.get('eval_keys')} fresh mask draws (never seen by the attack) that classify "
        "it correctly, averaged over examples, as the paper and Tramer et al. judge. The Vote "
        "column is a different classifier: the majority over the same R masks.",
        "",
    ]
    lines += autoattack.markdown(report)
    changed = report.get("inference_overrides") or {}
    if changed:
        lines += [
            "Evaluated with ME options other than the run was trained with: "
            + ", ".join(f"{k}={v['evaluated']!r} (trained {v['trained']!r})"
                        for k, v in changed.items()) + ".",
            "",
        ]  # fmt: skip
    lines += [
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
        *n_eval.markdown_table(report),
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
    if "runtime_checks" in b:
        z = b["runtime_checks"]
        lines.append(f"| runtime checks | {z['examples']} | | | {z['seconds']:.1f} |")
    paths.write_text(path, "\n".join(lines) + "\n")


def _counted(plan, results, R: int, what: str = "correct") -> dict:
    """Per counted row, its selection and measurement draws (one array per restart)."""
    return {
        row.name: protocol.split_draws(results[row.name][what], R)
        for row in plan.rows
        if row.counted
    }


def _roles(plan) -> dict:
    """What the checks read each row as (`rows.Row.role`)."""
    roles: dict = {Role.BLACKBOX: [], Role.SWEEP: []}
    for row in plan.rows:
        if row.role is Role.SWEEP:
            roles[Role.SWEEP].append((float(row.params["eps_multiplier"]), row.name))
        elif row.role is Role.BLACKBOX:
            roles[Role.BLACKBOX].append(row.name)
        elif row.role is not None:
            roles[row.role] = row.name
    roles[Role.SWEEP].sort()
    return roles


def build(plan, results, seconds, *, runtime, top5, num_classes, R) -> dict:
    """results.json's content from the rows run: figures per row, the headline, the checks, the
    budgets; `_arrays` holds what goes to results.npz (per-example rates, raw judging draws, the
    adversarial examples of the rows that decided the headline).

    Args:
      plan: the `rows.Plan` that was run.
      results: per row, `suite.run_row`'s output with its `protocol.row_figures` as "figures".
      seconds: per row (and "runtime_checks"), the seconds it took.
      runtime: `suite._runtime_checks`'s fractions, or None when no attack ran.
      top5: score top-5 accuracy too.
      num_classes: for the chance level.
      R: judging draws that measure (as many more select).
    """
    figures, values, arrays = {}, {}, {}
    for row in plan.rows:
        r = results[row.name]
        fig = dict(r["figures"])
        values[row.name] = fig.pop("values")
        fig.pop("restart")  # the worst restart per example (`n_eval` reads it)
        arrays[row.name] = values[row.name].astype(np.float32)
        arrays[f"draws/{row.name}"] = r["correct"]  # [restarts, 2R, n]: R measure, R select
        entry = {
            **fig,
            "n": row.n,
            "params": {**row.params, "examples": row.n, "eval_keys": R},
            "threat": row.threat,
            "group": row.kind,
            "role": None if row.role is None else row.role.value,
            "in_headline": row.counted,
            **r.get("extra", {}),
        }
        if top5:
            draws5 = protocol.split_draws(r["top5"], R)
            entry["top5"] = protocol.row_figures(**draws5)["accuracy"]
        figures[row.name] = entry

    head = protocol.headline(_counted(plan, results, R))
    arrays["headline"] = head.pop("values").astype(np.float32)
    decided, restart = head.pop("decided_by"), head.pop("restart")
    head["decided_by"] = {name: decided.count(name) for name in sorted(set(decided))}
    n_eval_meta = n_eval.add_figures(
        plan, results, figures, head, arrays, decided=decided, restart=restart
    )
    if top5:
        head5 = protocol.headline(_counted(plan, results, R, "top5"))
        arrays["headline_top5"] = head5["values"].astype(np.float32)
        head["top5"] = {"accuracy": head5["accuracy"], "interval": head5["interval"]}
    for row in plan.rows:  # the adversarial examples of the rows that decide the headline
        adv = results[row.name].get("adversarial")
        if adv is not None and row.name in head["decided_by"]:
            arrays[f"adversarial/{row.name}"] = adv[:, : head["n"]]
    clean_out = figures.pop("clean")
    randomness = {
        "pred_varies": round(float(results["clean"]["pred_varies"].mean()), 4),
        "logits_vary": round(float(results["clean"]["logits_vary"].mean()), 4),
    }
    found, skipped_checks = sanity.compute_checks(
        values,
        roles=_roles(plan),
        headline=arrays["headline"],
        num_classes=num_classes,
        runtime=runtime,
        randomness=randomness,
        randomized=plan.target.randomized,
        skipped_rows=plan.skipped,
    )
    budgets = {
        "examples": plan.n_all,
        "eval_keys": R,
        "rows": {
            row.name: {
                "examples": row.n,
                "steps": row.params.get("steps", 0),
                "samples": row.params.get("eot_samples", row.params.get("samples", 1)),
                "restarts": row.restarts,
                "seconds": seconds[row.name],
            }
            for row in plan.rows
        },
    }
    if "runtime_checks" in seconds:
        budgets["runtime_checks"] = {"examples": plan.n_all, "seconds": seconds["runtime_checks"]}
    out = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "headline": head,
        "clean": clean_out,
        "attacks": figures,
        "checks": found,
        "budgets": budgets,
        "skipped": {"rows": plan.skipped, "checks": skipped_checks},
        "n_eval": n_eval_meta,
        "_arrays": arrays,
    }
    _autoattack(plan, results, out)
    return out


def _autoattack(plan, results, out: dict) -> None:
    """AutoAttack's own judging beside the headline (`autoattack.summarise`), if its row ran."""
    for row in plan.rows:
        if row.kind == "autoattack_rand":
            entry, arrays = autoattack.summarise(row, results[row.name], out["_arrays"]["headline"])
            out["autoattack_rand"] = entry
            out["_arrays"].update(arrays)


def write(out: dict, arrays: dict, workdir: str) -> None:
    """Writes results.json, results.npz and results.md into WORKDIR, local or in a bucket (each
    file whole or not at all: `menet_jax.paths`)."""
    paths.write_text(paths.join(workdir, "results.json"), json.dumps(out, indent=2))
    paths.save_npz(paths.join(workdir, "results.npz"), compressed=True, **arrays)
    write_markdown(out, paths.join(workdir, "results.md"))
    if "autoattack_rand/robust" in arrays:  # AutoAttack's state format, beside its runs
        aa = out["autoattack_rand"]
        autoattack.write_state(workdir, arrays["autoattack_rand/robust"], aa["clean_accuracy"])
