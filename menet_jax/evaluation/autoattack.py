"""AutoAttack's protocol for randomised defences with its own judging (docs/method.md §6.9).

AutoAttack (Croce and Hein 2020, github.com/fra31/auto-attack) with `version='rand'` runs
APGD-CE and then APGD-DLR, 100 iterations each, one restart, the gradient averaged over 20 draws
of the model (EOT), and judges as `AutoAttack.run_standard_evaluation` does:

  1. clean check: one forward pass (one draw) per example; those it misclassifies are not robust;
  2. APGD-CE on the robust ones; its returned image is judged on one fresh forward pass, and an
     example it misclassifies is no longer robust (its image is kept as the adversarial one);
  3. APGD-DLR on the examples still robust, from the clean image, judged the same way.

Inside APGD (`autopgd_base.APGDAttack.perturb`) one more draw at the clean point decides which
examples it attacks (the others return x), and the image it returns is the last iterate that
the last EOT draw of its step misclassified, else x (`attacks.apgd(..., return_best=
"single_draw")`). An example once fooled never comes back. Per example the verdict is thus the
product of single-draw chances, not the minimum over attacks of the expected single-draw
accuracy that the headline takes (docs/method.md §6.2): on a classifier that classifies each
example correctly on each draw with probability q whatever the attack does, AutoAttack's
figure is q^3 and the headline's q.

`autoattack_rand` makes the images and the per-example flags of one batch (the
`autoattack_rand` row of `rows.py` calls it); `summarise` and `markdown` put its figure beside the
headline in results.json / results.md; `write_state` writes the flags in AutoAttack's state format
(`autoattack/state.py`, `EvaluationState.to_disk`) so they can be put beside an AutoAttack run.

Keys: k_clean, k_ce, k_dlr = split(key, 3); per attack k_check, k_attack, k_judge = split(k, 3)
(APGD's own clean draw, APGD's key, the fresh judging draw). What differs from AutoAttack: APGD's
own differences (`menet_jax.attacks.apgd`'s docstring: the mean loss over the EOT draws drives
the best point and the step size); both attacks run on every example of the batch and only the
survivors' results count (the same verdicts, examples being independent); AutoAttack reseeds
torch's generator before each attack, here every draw is fresh.
"""

from __future__ import annotations

import datetime
import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax import paths
from menet_jax.attacks.apgd import apgd
from menet_jax.attacks.logits_fn import merge_fn, split_fn
from menet_jax.evaluation.stats import wilson

ATTACKS = ("apgd-ce", "apgd-dlr")  # AutoAttack's attacks_to_run for version 'rand'
LOSSES = {"apgd-ce": "ce", "apgd-dlr": "dlr"}
LABEL = "AutoAttack (rand), its own judging"
STATE_FILE = "autoattack_state.json"
FLAGS = ("clean", "after_apgd_ce", "robust")  # per example, after each stage
AUTOATTACK_BUDGET = {"steps": 100, "eot_samples": 20}


@partial(jax.jit, static_argnames=("fn_static",))
def _correct(fn_dynamic, x, y, key, *, fn_static):
    """One draw's verdict per example, bool [B] (AutoAttack's `get_logits(x).max(1)[1] == y`)."""
    return jnp.argmax(merge_fn(fn_dynamic, fn_static)(x, key), axis=-1) == y


def _per_image(flag: jax.Array) -> jax.Array:
    return flag[:, None, None, None]


def autoattack_rand(
    logits_fn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    steps: int = 100,
    eot_samples: int = 20,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """AutoAttack's 'rand' protocol on one batch: its final images and per-example verdicts.

    Args:
      logits_fn: `(x, key) -> logits [B, K]`, one draw of the randomised model per key.
      x: images [B, H, W, C] in [0, 1].
      y: integer labels [B].
      key: typed key, split as the module docstring says.
      eps: L-inf radius.
      steps: APGD iterations (AutoAttack: 100).
      eot_samples: draws averaged per APGD gradient (AutoAttack: 20).

    Returns:
      (x_adv [B, H, W, C]: the image that fooled AutoAttack's judging draw, else x;
      {"clean", "after_apgd_ce", "robust"}: bool [B], robust by AutoAttack's rule after the
      clean check, after APGD-CE and after APGD-DLR (the final verdict)).
    """
    dynamic, static = split_fn(logits_fn)

    def correct(z, k):
        return _correct(dynamic, z, y, k, fn_static=static)

    k_clean, *k_attacks = jax.random.split(key, 1 + len(ATTACKS))
    robust = correct(x, k_clean)
    flags, x_adv = {"clean": robust}, x
    for name, k in zip(ATTACKS, k_attacks, strict=True):
        k_check, k_attack, k_judge = jax.random.split(k, 3)
        adv = apgd(logits_fn, x, y, k_attack, eps=eps, steps=steps, loss=LOSSES[name],
                   eot_samples=eot_samples, return_best="single_draw")  # fmt: skip
        adv = jnp.where(_per_image(correct(x, k_check)), adv, x)  # APGD attacks what it sees right
        fooled = robust & ~correct(adv, k_judge)
        x_adv = jnp.where(_per_image(fooled), adv, x_adv)
        robust = robust & ~fooled
        if name == "apgd-ce":
            flags["after_apgd_ce"] = robust
    flags["robust"] = robust
    return x_adv, flags


# ---------------------------------------------------------------------------------------------
# The report: the figure beside the headline, its paragraph, AutoAttack's state file


def summarise(row, result: dict, headline_values: np.ndarray) -> tuple[dict, dict]:
    """results.json's `autoattack_rand` entry and its results.npz arrays.

    Args:
      row: the `rows.Row` of kind autoattack_rand.
      result: its `suite.run_row` output with "figures" (`protocol.row_figures` of its final
        images on fresh draws) and the flags of `autoattack_rand` as "aux_<flag>" [1, n].
      headline_values: the headline's per-example values (the first examples).
    """
    flags = {f: np.asarray(result[f"aux_{f}"])[0].astype(bool) for f in FLAGS}
    robust, n = flags["robust"], row.n
    lo, hi = wilson(int(robust.sum()), n)
    fig = result["figures"]
    m = min(n, len(headline_values))
    budget = {k: int(row.params[k]) for k in AUTOATTACK_BUDGET}
    entry = {
        "label": LABEL,
        "row": row.name,
        "accuracy": round(float(robust.mean()), 4),
        "interval": [round(lo, 4), round(hi, 4)],
        "n": n,
        "clean_accuracy": round(float(flags["clean"].mean()), 4),  # AutoAttack's "initial"
        "after_apgd_ce": round(float(flags["after_apgd_ce"].mean()), 4),
        "fresh_draws": {"accuracy": fig["accuracy"], "interval": fig["interval"]},
        "headline_same_examples": {
            "accuracy": round(float(np.mean(headline_values[:m])), 4),
            "n": int(m),
        },
        "in_headline": False,
        **budget,
        "autoattack_budget": all(budget[k] >= v for k, v in AUTOATTACK_BUDGET.items()),
        "state_file": STATE_FILE,
    }
    arrays = {f"autoattack_rand/{f}": flags[f] for f in FLAGS}
    return entry, arrays


def markdown(report: dict) -> list[str]:
    """results.md's lines for AutoAttack's figure and why it differs from the headline."""
    a = report.get("autoattack_rand")
    if not a:
        return []
    cut = (
        ""
        if a["autoattack_budget"]
        else f"; run at a cut budget ({a['steps']} iterations x EOT {a['eot_samples']}), "
        "weaker than AutoAttack's protocol (100 x 20)"
    )
    fresh, same = a["fresh_draws"], a["headline_same_examples"]
    if fresh["accuracy"] >= same["accuracy"]:
        verdict = "its lower figure comes from its judging, not from stronger images"
    else:  # the headline's counted rows missed what AutoAttack found: say so, do not explain it
        verdict = (
            "here its images are stronger than the headline's worst case on these examples, "
            "so the headline's counted rows missed an attack"
        )
    return [
        f"**{a['label']}: {a['accuracy']:.2%}** (95% CI {a['interval'][0]:.1%}-"
        f"{a['interval'][1]:.1%}) on {a['n']} test examples, beside the headline and not "
        f"counted in it{cut}. Clean on one draw {a['clean_accuracy']:.2%}, after APGD-CE "
        f"{a['after_apgd_ce']:.2%}, after APGD-DLR {a['accuracy']:.2%}.",
        "",
        "The two figures judge differently. AutoAttack's `version='rand'` checks each example "
        "on one draw when clean, then after APGD-CE, then (survivors only) after APGD-DLR, each "
        "on one fresh draw, and an example once fooled stays fooled (inside APGD too, an iterate "
        "that one noisy pass misclassified is kept). Its verdict per example is the product of "
        "those single-draw chances: an example that a fresh mask classifies correctly with "
        "probability q whatever the attack does survives with probability about q^3. The "
        "headline takes per example the minimum over the attacks of the expected single-draw "
        "accuracy, q (docs/method.md §6.2). Judged as the headline judges, by fresh masks, "
        f"AutoAttack's own final images score {fresh['accuracy']:.2%} (the headline on the "
        f"same {same['n']} examples: {same['accuracy']:.2%}): {verdict}. Quote the headline "
        "for the threat it measures, one "
        "adversarial image judged by one fresh mask (the paper's and Tramer et al.'s protocol); "
        "quote AutoAttack's figure beside it to compare with published AutoAttack 'rand' "
        "numbers, or for a threat in which each of several noisy predictions is a chance to "
        f"fool the model. Its per-example flags: {a['state_file']} (AutoAttack's state format).",
        "",
    ]


def state(robust: np.ndarray, clean_accuracy: float, path: str) -> dict:
    """AutoAttack's state-file content for per-example robust flags.

    The fields and their order are those of `autoattack/state.py`'s `EvaluationState` as
    `to_disk` writes it (`asdict`, `_robust_flags` as a list of bools, `_run_attacks` as a list,
    datetimes through `str`, which `datetime.fromisoformat` reads back). `_attacks_to_run`, a set
    there that `json.dump(..., default=str)` writes as its string form, is written as a list.
    """
    return {
        "_attacks_to_run": list(ATTACKS),
        "path": str(path),
        "_run_attacks": list(ATTACKS),
        "_robust_flags": [bool(f) for f in np.asarray(robust, bool)],
        "_last_saved": str(datetime.datetime.now()),
        "_SAVE_TIMEOUT": 60,
        "_clean_accuracy": float(clean_accuracy),
    }


def write_state(workdir: str, robust: np.ndarray, clean_accuracy: float) -> str:
    """Writes WORKDIR/autoattack_state.json (`state`) and returns its path."""
    path = paths.join(workdir, STATE_FILE)
    paths.write_text(path, json.dumps(state(robust, clean_accuracy, path)))
    return path


def read_state(path: str) -> dict:
    """A state file's fields, as AutoAttack's `EvaluationState.from_disk` parses them:
    `_robust_flags` a bool array, `_last_saved` a datetime."""
    d = json.loads(paths.read_text(path))
    d["_robust_flags"] = np.asarray(d["_robust_flags"], bool)
    d["_last_saved"] = datetime.datetime.fromisoformat(d["_last_saved"])
    return d
