"""The attack rows: each kind of row defined once (docs/method.md §5-6).

A `Kind` is one entry of `config.eval.attacks` and one config section `config.eval.<name>`: its
keys (defaults beside their checks), its threat model, what it needs (a preprocessing before
the network, randomness, a source model: a model without it skips the kind with the reason),
whether its rows count toward the headline, and `build(plan, section)`, which adds its rows to a
`Plan`. A `Row` is one line of the report: how its adversarial images are made for one batch
(`make(x, y, key)`, or `reuse`: the images of an earlier row), how they are judged, and the `role`
it plays in the checks (`menet_jax.evaluation.sanity`). `KINDS` lists the kinds in run order.

Adding an attack is one `Kind` here (its keys, its rows) plus its tests.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable

import ml_collections

from menet_jax import attacks, rng
from menet_jax.config import (
    POSITIVE,
    POSITIVE_INT,
    Key,
    is_int,
    is_num,
    optional,
    positive,
    positive_int,
)
from menet_jax.evaluation import autoattack

# ---------------------------------------------------------------------------------------------
# Key checks


def _examples(default: int | None) -> Key:
    return Key(
        default,
        "a non-negative integer (0 skips the row) or None (every eval.num_examples example)",
        lambda v: v is None or (is_int(v) and v >= 0),
        "examples of this diagnostic row (a prefix of the evaluated examples)",
        int,
    )


# ---------------------------------------------------------------------------------------------
# Rows and plans


class Role(enum.Enum):
    """What a row is to the sanity checks (`menet_jax.evaluation.sanity`); its value is what
    results.json writes in the row's `role`."""

    REFERENCE = "reference"  # the main white-box PGD row
    FGSM = "fgsm"  # FGSM at the main eps: PGD must not be weaker
    LONG = "long"  # a longer PGD: must not be weaker than the reference
    EOT = "eot"  # BPDA+EOT: must not be weaker than BPDA
    GRAYBOX = "graybox"  # PGD on the bare network, judged through ME
    BLACKBOX = "blackbox"  # score-based, decision-based and transfer rows
    SWEEP = "sweep"  # the eps sweep (its params carry eps_multiplier)
    NO_ME = "no_me"  # an attack on the bare network judged bare: must succeed
    FIXED_MASK = "fixed_mask"  # PGD and judging with one fixed mask: must succeed


@dataclasses.dataclass
class Row:
    """One row of the report.

    Attributes:
      name: the row's name (results.json key).
      kind: the `Kind` (config section and eval.attacks group) that made it.
      threat: the threat model in words (results.md).
      n: examples it runs on (a prefix of the evaluated examples).
      params: its budget, as recorded in results.json.
      make: (x, y, key) -> x_adv for one padded batch; None when `reuse` is set.
      reuse: take x_adv from this earlier row (every restart).
      judge: "defended", "vote", "network" or "fixed" (`target.EvaluatedClassifier.judges`).
      counted: in the headline (white-box / gray-box at the main eps, on every example).
      role: what the checks read it as (a `Role`), or None.
      bounded_eps: boundary: a success counts only within this L-inf distance.
      restarts: independent runs; every one is judged, the worst counts per example.
    """

    name: str
    kind: str
    threat: str
    n: int
    params: dict
    make: Callable | None = None
    reuse: str | None = None
    judge: str = "defended"
    counted: bool = False
    role: Role | None = None
    bounded_eps: float | None = None
    restarts: int = 1


@dataclasses.dataclass
class Plan:
    """The rows to run, in order, and the rows skipped with their reasons.

    Attributes:
      ev: the `config.eval` section.
      target: the evaluated classifier (`target.EvaluatedClassifier`).
      source: the transfer source (`target.EvaluatedClassifier`) or None.
      n_all: examples every counted row runs on.
    """

    ev: ml_collections.ConfigDict
    target: object
    source: object | None
    n_all: int
    rows: list[Row] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def eps(self) -> float:
        return float(self.ev.eps)

    @property
    def main_steps(self) -> int:
        return max(self.ev.pgd.steps)

    @property
    def main_pgd(self) -> str:
        return f"pgd_{self.main_steps}"

    @property
    def whitebox_threat(self) -> str:
        t = self.target
        return f"white-box {t.gradient.upper()}" if t.preprocessed else "white-box"

    def size(self, examples: int | None) -> int:
        return self.n_all if examples is None else min(int(examples), self.n_all)

    def has(self, name: str) -> bool:
        return any(r.name == name for r in self.rows)

    def add(self, row: Row) -> None:
        if row.n <= 0:
            self.skipped[row.name] = f"eval.{row.kind}.examples is 0"
        else:
            self.rows.append(row)

    def pgd(self, name: str, kind: str, threat: str, n: int, fn, **kw) -> None:
        """A PGD row on logits_fn `fn`, or on `fn(x, key)` built per batch when `per_batch`."""
        per_batch = kw.pop("per_batch", False)
        extra = kw.pop("extra_params", {})
        row_kw = {k: kw.pop(k) for k in ("judge", "counted", "role") if k in kw}
        opts = {"eps": self.eps, "steps": self.main_steps, "step_size": float(self.ev.step_size)}
        opts.update(kw)

        def make(x, y, k):
            return attacks.pgd(fn(x, k) if per_batch else fn, x, y, k, **opts)

        params = {k: v for k, v in opts.items() if k != "keep_best" or v}
        restarts = int(self.ev.restarts)
        self.add(Row(name, kind, threat, n, {**params, "restarts": restarts, **extra}, make=make,
                     restarts=restarts, **row_kw))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of row: config section `eval.<name>`, threat, needs, and its rows."""

    name: str
    threat: str  # none, white-box, gray-box, black-box, transfer, vote, sanity
    counted: bool
    keys: dict[str, Key]
    build: Callable[[Plan, ml_collections.ConfigDict], None]
    doc: str
    needs: str | None = None  # "preprocessing" or "randomness": skipped on a model without it
    needs_source: bool = False


# ---------------------------------------------------------------------------------------------
# The kinds' rows


def _clean(plan: Plan, c) -> None:
    plan.rows.append(Row("clean", "clean", "none", plan.n_all, {}, make=lambda x, y, k: x,
                         counted=True))  # fmt: skip


def _fgsm(plan: Plan, c) -> None:
    t, eps = plan.target, plan.eps

    def make(x, y, k):
        return attacks.fgsm(t.whitebox, x, y, k, eps=eps)

    plan.add(Row("fgsm", "fgsm", plan.whitebox_threat, plan.n_all, {"eps": eps}, make=make,
                 counted=True, role=Role.FGSM))  # fmt: skip


def _pgd(plan: Plan, c) -> None:
    t, threat = plan.target, plan.whitebox_threat
    for s in c.steps:
        role = Role.REFERENCE if s == plan.main_steps else None
        plan.pgd(f"pgd_{s}", "pgd", threat, plan.n_all, t.whitebox, steps=s, counted=True,
                 role=role)  # fmt: skip
    plan.pgd(f"pgd_long_{c.long_steps}", "pgd", threat, plan.size(c.long_examples), t.whitebox,
             steps=c.long_steps, role=Role.LONG)  # fmt: skip


def _cw(plan: Plan, c) -> None:
    for kappa in c.kappas:
        plan.pgd(f"cw_k{kappa:g}", "cw", plan.whitebox_threat, plan.n_all, plan.target.whitebox,
                 loss="cw", kappa=float(kappa), counted=True)  # fmt: skip


def _eot(plan: Plan, c) -> None:
    size = 5 * plan.eps / c.steps if c.step_size is None else float(c.step_size)
    plan.pgd("bpda_eot", "eot", f"{plan.whitebox_threat}+EOT", plan.n_all, plan.target.whitebox,
             steps=c.steps, step_size=size, eot_samples=c.samples, keep_best=True, counted=True,
             role=Role.EOT)  # fmt: skip


def _apgd(plan: Plan, c) -> None:
    t = plan.target
    samples = int(c.eot_samples) if t.randomized else 1  # EOT needs randomness
    restarts = int(plan.ev.restarts)
    for loss in c.losses:
        opts = {"eps": plan.eps, "steps": int(c.steps), "loss": loss, "eot_samples": samples}

        def make(x, y, k, opts=opts):
            return attacks.apgd(t.whitebox, x, y, k, **opts)

        label = loss.upper().replace("_TARGETED", "-T")
        threat = f"{plan.whitebox_threat} APGD-{label}" + ("+EOT" if samples > 1 else "")
        plan.add(Row(f"apgd_{loss}", "apgd", threat, plan.n_all, {**opts, "restarts": restarts},
                     make=make, restarts=restarts, counted=True))  # fmt: skip


def _autoattack_rand(plan: Plan, c) -> None:
    # Not counted: AutoAttack's own judging (one draw per attack, fooled stays fooled) is another
    # estimator; its verdicts come back beside the images (`run_row`'s aux_*), its figure goes
    # beside the headline, and the row itself judges its final images on fresh draws.
    t = plan.target
    opts = {"eps": plan.eps, "steps": int(c.steps), "eot_samples": int(c.eot_samples)}

    def make(x, y, k):
        return autoattack.autoattack_rand(t.whitebox, x, y, k, **opts)

    threat = f"{plan.whitebox_threat} AutoAttack rand (APGD-CE, then APGD-DLR on survivors)+EOT"
    plan.add(Row("autoattack_rand", "autoattack_rand", threat, plan.size(c.examples),
                 {**opts, "restarts": 1, "version": "rand"}, make=make))  # fmt: skip


def _network_only(plan: Plan, c) -> None:
    t = plan.target

    def at_rec(x, k):
        return t.at_rec(t.preprocess(x, rng.fixed_mask_key(k)), x)

    plan.pgd("network_only", "network_only", "network-only (fixed ME(x))", plan.n_all, at_rec,
             per_batch=True, counted=True)  # fmt: skip


def _graybox(plan: Plan, c) -> None:
    plan.pgd("graybox", "graybox", "gray-box (bare network)", plan.n_all, plan.target.network,
             counted=True, role=Role.GRAYBOX)  # fmt: skip


def _transfer(plan: Plan, c) -> None:
    src, eps = plan.source, plan.eps
    via = "through its ME with BPDA" if src.preprocessed else "vanilla"
    threat = f"transfer ({via})"

    def fgsm(x, y, k):
        return attacks.fgsm(src.whitebox, x, y, k, eps=eps)

    plan.add(Row("transfer_fgsm", "transfer", threat, plan.n_all, {"eps": eps}, make=fgsm,
                 role=Role.BLACKBOX))  # fmt: skip
    plan.pgd(f"transfer_{plan.main_pgd}", "transfer", threat, plan.n_all, src.whitebox,
             role=Role.BLACKBOX)  # fmt: skip
    for kappa in list(plan.ev.cw.kappas)[:1]:
        plan.pgd(f"transfer_cw_k{kappa:g}", "transfer", threat, plan.n_all, src.whitebox,
                 loss="cw", kappa=float(kappa), role=Role.BLACKBOX)  # fmt: skip
    # The authors' transfer CW: foolbox CW-L2 at confidence 20, unbounded in L-inf, where any
    # misclassified iterate counts as found (confident_only=False, as foolbox 1.6.2 did).
    opts = {"confidence": float(c.cw_l2_confidence), "steps": int(c.cw_l2_steps),
            "confident_only": False}  # fmt: skip

    def cw_l2(x, y, k):
        return attacks.cw_l2(src.whitebox, x, y, k, **opts)

    threat = f"transfer ({via}), CW-L2 unbounded (the authors' transfer CW)"
    plan.add(
        Row(
            f"transfer_cw_l2_c{c.cw_l2_confidence:g}",
            "transfer",
            threat,
            plan.n_all,
            {"eps": None, **opts},
            make=cw_l2,
        )
    )  # fmt: skip  (eps None: an L2 attack)


def _spsa(plan: Plan, c) -> None:
    t = plan.target
    opts = {"eps": plan.eps, "steps": int(c.steps), "samples": int(c.samples),
            "learning_rate": float(c.learning_rate), "delta": float(c.delta)}  # fmt: skip

    def make(x, y, k):
        return attacks.spsa(t.whitebox, x, y, k, **opts, batch_samples=math.gcd(c.samples, 128))

    plan.add(Row("spsa", "spsa", "score-based", plan.size(c.examples), opts, make=make,
                 role=Role.BLACKBOX))  # fmt: skip


def _boundary(plan: Plan, c) -> None:
    t = plan.target

    def make(x, y, k):
        return attacks.boundary(t.whitebox, x, y, k, steps=c.steps, proposals=c.proposals)

    params = {"eps": plan.eps, "steps": int(c.steps), "proposals": int(c.proposals)}
    plan.add(Row("boundary", "boundary", "decision-based", plan.size(c.examples), params,
                 make=make, bounded_eps=plan.eps, role=Role.BLACKBOX))  # fmt: skip


def _vote(plan: Plan, c) -> None:
    t, n = plan.target, plan.size(c.examples)
    k = {"votes": t.votes}
    plan.add(Row("vote_clean", "vote", "majority vote", n, {"eps": 0.0, **k},
                 make=lambda x, y, key: x, judge="vote"))  # fmt: skip
    main = plan.main_pgd
    if plan.has(main):
        ev = plan.ev
        params = {"eps": plan.eps, "steps": plan.main_steps, "step_size": float(ev.step_size),
                  "restarts": int(ev.restarts), **k}  # fmt: skip
        plan.add(Row(f"vote_{main}", "vote", "majority vote (main PGD images, not aimed at it)",
                     n, params, reuse=main, judge="vote"))  # fmt: skip
    # The attack aimed at the vote: APGD-CE on the log of the mean softmax over the vote's k
    # masks, drawn fresh at every step (EOT over the vote's masks).
    opts = {"eps": plan.eps, "steps": int(c.steps), "loss": "ce", "eot_samples": 1}

    def make(x, y, key):
        return attacks.apgd(t.vote_soft, x, y, key, **opts)

    threat = f"majority vote, attacked: {plan.whitebox_threat} APGD-CE on the mean of its masks"
    plan.add(Row("vote_apgd_ce", "vote", threat, n, {**opts, **k}, make=make, judge="vote"))


def _sanity(plan: Plan, c) -> None:
    t, ev, threat = plan.target, plan.ev, plan.whitebox_threat
    n, main = plan.size(c.examples), plan.main_pgd
    common = {"eps": plan.eps, "steps": plan.main_steps, "step_size": float(ev.step_size),
              "restarts": int(ev.restarts)}  # fmt: skip
    for m in map(float, c.eps_multipliers):
        name = f"sweep_eps_x{m:g}"
        if m == 1 and plan.has(main):
            plan.add(Row(name, "sanity", threat, n, {**common, "eps_multiplier": m}, reuse=main,
                         role=Role.SWEEP))  # fmt: skip
        else:
            plan.pgd(name, "sanity", threat, n, t.whitebox, eps=plan.eps * m,
                     step_size=float(ev.step_size) * m, role=Role.SWEEP,
                     extra_params={"eps_multiplier": m})  # fmt: skip
    if not t.preprocessed:
        plan.skipped["no_me_pgd"] = plan.skipped["fixed_mask_pgd"] = t.lacks("preprocessing")
        return
    if plan.has("graybox"):
        plan.add(Row("no_me_pgd", "sanity", "no ME (bare network)", plan.n_all, common,
                     reuse="graybox", judge="network", role=Role.NO_ME))  # fmt: skip
    else:
        plan.pgd("no_me_pgd", "sanity", "no ME (bare network)", n, t.network, judge="network",
                 role=Role.NO_ME)  # fmt: skip
    if not t.randomized:
        plan.skipped["fixed_mask_pgd"] = t.lacks("randomness")
        return
    if not t.has_exact_gradient:
        plan.skipped["fixed_mask_pgd"] = t.lacks("exact_gradient")
        return
    plan.pgd("fixed_mask_pgd", "sanity", "one fixed mask (exact gradients)", n,
             lambda x, k: t.fixed(rng.fixed_mask_key(k)), per_batch=True, judge="fixed",
             role=Role.FIXED_MASK)  # fmt: skip


def _steps_tuple(v) -> bool:
    v = tuple(v) if isinstance(v, tuple | list) else ()
    return bool(v) and all(positive_int(s) for s in v)


def _increasing_multipliers(v) -> bool:
    v = tuple(v) if isinstance(v, tuple | list) else (None,)
    return all(is_num(m) and m >= 0 for m in v) and list(v) == sorted(set(v))


KINDS: tuple[Kind, ...] = (
    Kind("clean", "none", True, {}, _clean, "no attack"),
    Kind("fgsm", "white-box", True, {}, _fgsm, "FGSM (Tables 11/13/16/19/22)"),
    Kind("pgd", "white-box", True, {
        "steps": Key((7, 20, 40, 100), "a non-empty tuple of positive integers", _steps_tuple,
                     "PGD steps, one row each; the longest is the main PGD row"),
        "long_steps": Key(1000, POSITIVE_INT, positive_int,
                          "steps of the long-PGD convergence row"),
        "long_examples": _examples(200),
    }, _pgd, "PGD at eval.eps / eval.step_size; a long run as a convergence diagnostic"),
    Kind("cw", "white-box", True, {
        "kappas": Key((20.0, 50.0), "a tuple of numbers >= 0",
                      lambda v: all(is_num(k) and k >= 0 for k in v),
                      "confidences of the CW-Linf rows (PGD on the CW margin loss)"),
    }, _cw, "CW-Linf: PGD on the CW margin loss, the main PGD budget"),
    Kind("eot", "white-box", True, {
        "steps": Key(200, POSITIVE_INT, positive_int, "steps of BPDA+EOT (Tramer et al.: 200)"),
        "samples": Key(41, POSITIVE_INT, positive_int, "fresh masks averaged per step (1 + 40)"),
        "step_size": Key(None, "a positive number or None", optional(positive),
                         "None: 5 * eps / steps (Tramer et al.)", float),
    }, _eot, "BPDA+EOT (Tramer et al. 2020), the best iterate kept", needs="randomness"),
    Kind("apgd", "white-box", True, {
        "losses": Key(("ce", "dlr"), "a non-empty tuple of 'ce', 'dlr', 'dlr_targeted'",
                      lambda v: bool(v) and set(v) <= {"ce", "dlr", "dlr_targeted"},
                      "one APGD row per loss"),
        "steps": Key(100, POSITIVE_INT, positive_int,
                     "iterations (AutoAttack's rand version: 100)"),
        "eot_samples": Key(20, POSITIVE_INT, positive_int,
                           "fresh masks averaged per gradient (20)"),
    }, _apgd, "APGD with EOT (Croce & Hein 2020, AutoAttack's randomised version)"),
    Kind("autoattack_rand", "white-box", False, {
        "steps": Key(100, POSITIVE_INT, positive_int, "APGD iterations (AutoAttack rand: 100)"),
        "eot_samples": Key(20, POSITIVE_INT, positive_int,
                           "draws averaged per APGD gradient (AutoAttack rand: 20)"),
        "examples": _examples(None),
    }, _autoattack_rand, "AutoAttack's version 'rand' with its own judging (one draw per "
        "attack, a fooled example stays fooled), reported beside the headline",
        needs="randomness"),
    Kind("network_only", "gray-box", True, {}, _network_only,
         "Table 12: PGD on the network at one fixed ME(x), judged through a fresh ME",
         needs="preprocessing"),
    Kind("graybox", "gray-box", True, {}, _graybox,
         "Tables 10/15/18/21: PGD on the bare network, judged through ME",
         needs="preprocessing"),
    Kind("transfer", "transfer", False, {
        "source_workdir": Key(None, "a path or None", lambda v: v is None or isinstance(v, str),
                              "the workdir of an independently trained source model", str),
        "cw_l2_confidence": Key(20.0, "a number >= 0", lambda v: is_num(v) and v >= 0,
                                "the authors' transfer CW-L2 confidence (foolbox 1.6.2)"),
        "cw_l2_steps": Key(1000, POSITIVE_INT, positive_int, "CW-L2 iterations"),
    }, _transfer, "Tables 9/14/17/20: attacks on eval.transfer.source_workdir's model",
        needs_source=True),
    Kind("spsa", "black-box", False, {
        "examples": _examples(100),
        "steps": Key(100, POSITIVE_INT, positive_int, "SPSA iterations"),
        "samples": Key(2048, "an even integer >= 2", lambda v: is_int(v) and v >= 2 and v % 2 == 0,
                       "perturbation samples per step"),
        "learning_rate": Key(0.01, POSITIVE, positive, "Adam learning rate"),
        "delta": Key(0.01, POSITIVE, positive, "perturbation size"),
    }, _spsa, "score-based SPSA on the randomised model"),
    Kind("boundary", "black-box", False, {
        "examples": _examples(100),
        "steps": Key(1000, POSITIVE_INT, positive_int, "Boundary attack steps"),
        "proposals": Key(25, POSITIVE_INT, positive_int, "proposals per step (foolbox 1.6.2: 25)"),
    }, _boundary, "decision-based Boundary attack; a success counts only within eps"),
    Kind("vote", "vote", False, {
        "examples": _examples(None),
        "steps": Key(100, POSITIVE_INT, positive_int, "iterations of APGD aimed at the vote"),
    }, _vote, "the k-mask majority vote (supplement J): clean, main-PGD images, and APGD aimed "
        "at the vote itself", needs="randomness"),
    Kind("sanity", "sanity", False, {
        "examples": _examples(200),
        "eps_multipliers": Key((0.0, 0.25, 0.5, 1.0, 2.0, 4.0), "strictly increasing numbers >= 0",
                               _increasing_multipliers, "PGD at these multiples of eval.eps"),
    }, _sanity, "PGD swept over eps; PGD on the bare network; PGD with one fixed mask"),
)  # fmt: skip

BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
