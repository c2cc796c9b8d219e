"""The supplement's studies (docs/method.md §8) as declarations, at the CPU demo's scale.

Defaults suit `configs/mnist_demo.py` on a CPU (n = 200-300 test digits, cut budgets; README
gives the time of all seven); every default is a config override, so
`--config.eval.num_examples=1000 --config.eval.eot.steps=200` restores larger budgets. Grids are
relative to the base config where the paper's are (eps fractions of eval.eps, step sizes
multiples of eval.step_size), so the same study runs on the dataset configs. Every evaluated point
includes an adaptive attack (BPDA+EOT) among its counted rows, so its headline is the project's
honest figure (docs/method.md §6.2), beside the row the paper reported.
"""

from __future__ import annotations

from menet_jax.study import noise
from menet_jax.study.core import Bars, Column, Lines, Point, Quoted, Study, register

# The adaptive attack of every evaluated point at the demo's budget (40 steps, EOT 4), and no
# long-PGD diagnostic.
ADAPTIVE = {"eval.eot.steps": 40, "eval.eot.samples": 4, "eval.pgd.long_examples": 0}
EOT = Column("BPDA+EOT", "bpda_eot")


def _range(a: float, b: float) -> dict:
    return {"me.p_start": a, "me.p_end": b}


def _label(a: float, b: float) -> str:
    return f"{a:g}" if a == b else f"{a:g}-{b:g}"


# ---------------------------------------------------------------------------------------------
# eps (Fig. 7)

EPS_FRACTIONS = (0.25, 0.5, 1.0)  # of eval.eps: the paper's 2, 4, 8 of 255 at eps 8/255
EPS_MODELS = (("p0.4-0.6", _range(0.4, 0.6)), ("p0.8-1", _range(0.8, 1.0)),
              ("vanilla", {"me.method": "none"}))  # fmt: skip


def _eps_points(config):
    out = []
    for label, training in EPS_MODELS:
        for f in EPS_FRACTIONS:
            eps = round(config.eval.eps * f, 6)
            # PGD's step is eps / 4 at every eps (the paper's 2/255 at 8/255).
            over = {**training, "eval.eps": eps, "eval.step_size": eps / 4}
            out.append(Point(f"{label}_eps{eps:g}", over, {"model": label, "eps": eps}))
    return out


register(Study(
    name="eps",
    title="Fig. 7: robust accuracy against eps and attack steps, per model",
    paper="pure ME-Net on CIFAR-10, white-box BPDA PGD at eps 2, 4 and 8 (of 255), several "
    "training p ranges and step counts.",
    ours="MNIST-scale eps 1/4, 1/2 and 1 x eval.eps (0.075, 0.15, 0.3 on the demo), PGD-7/20/40 "
    "with step eps/4, and BPDA+EOT (40 steps, EOT 4) as the adaptive row; models p 0.4-0.6, "
    "p 0.8-1 and vanilla; 200 test digits per point.",
    points=_eps_points,
    defaults={**ADAPTIVE, "eval.num_examples": 200, "eval.attacks": "pgd,eot",
              "eval.pgd.steps": (7, 20, 40)},
    columns=(Column("PGD-7", "pgd_7"), Column("PGD-20", "pgd_20"), Column("PGD-40", "pgd_40"),
             EOT),
    plot=Lines("eps", ("PGD-7", "PGD-40", "BPDA+EOT", "headline"), panel="model"),
))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# p_tradeoff (Fig. 8)

P_RANGES = ((0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0))


def _p_points(config):
    out = [Point(f"p{_label(a, b)}", _range(a, b), {"p range": _label(a, b), "p": (a + b) / 2})
           for a, b in P_RANGES]  # fmt: skip
    return out + [Point("vanilla", {"me.method": "none"}, {"p range": "none"})]


register(Study(
    name="p_tradeoff",
    title="Fig. 8: clean and robust accuracy against the training p",
    paper="pure ME-Net trained at several p ranges (0.2->0.4 ... 0.8->1) and vanilla; clean "
    "accuracy and robust accuracy under 7-step white-box BPDA, per dataset.",
    ours="the same ranges and vanilla, 300 test digits; the paper's row (BPDA PGD-7, step eps/4 "
    "as 2/255 at 8/255) beside FGSM, BPDA+EOT (40 steps, EOT 4) and the headline over all three.",
    points=_p_points,
    defaults=lambda c: {**ADAPTIVE, "eval.num_examples": 300, "eval.attacks": "fgsm,pgd,eot",
                        "eval.pgd.steps": (7,), "eval.step_size": c.eval.eps / 4},
    columns=(Column("FGSM", "fgsm"), Column("PGD-7 (paper)", "pgd_7"), EOT),
    plot=Lines("p", ("clean", "PGD-7 (paper)", "headline"), xlabel="mean training p"),
))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# me_methods (Tables 23 / 24)

register(Study(
    name="me_methods",
    title="Tables 23/24: USVT, Soft-Impute and nuclear norm, training otherwise identical",
    paper="CIFAR-10; pure models under transfer attacks (Table 23), PGD-7 adversarially trained "
    "models under white-box BPDA up to 1,000 steps (Table 24).",
    ours="the three solvers with the base config's training (demo: p 0.4-0.6, 10 masks), 300 "
    "test digits; transfer rows from a vanilla model trained alike (FGSM, PGD-40, CW-Linf, the "
    "authors' CW-L2 at 100 steps) and white-box rows (FGSM, BPDA PGD-40, BPDA+EOT).",
    points=[Point(m, {"me.method": m}, {"method": m}, transfer=True)
            for m in ("usvt", "softimpute", "nucnorm")],
    defaults={**ADAPTIVE, "eval.num_examples": 300, "eval.attacks": "fgsm,pgd,eot,transfer",
              "eval.pgd.steps": (40,), "eval.transfer.cw_l2_steps": 100},
    columns=(Column("transfer FGSM", "transfer_fgsm"), Column("transfer PGD", "transfer_pgd_*"),
             Column("transfer CW", "transfer_cw_k*"), Column("transfer CW-L2", "transfer_cw_l2_*"),
             Column("FGSM", "fgsm"), Column("PGD", "pgd_*"), EOT),
    plot=Bars(("clean", "transfer PGD", "PGD", "BPDA+EOT", "headline")),
    paper_adversarial=True,
))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# restarts (Table 25)

RESTARTS = (1, 5, 10)
STEP_MULTIPLIERS = (1, 2, 4)  # of eval.step_size: 0.01 / 0.02 / 0.04 on the demo, 2/4/8 of 255


def _restart_points(config):
    out = []
    for m in STEP_MULTIPLIERS:
        step = round(config.eval.step_size * m, 6)
        for r in RESTARTS:
            out.append(Point(f"step{step:g}_r{r}", {"eval.step_size": step, "eval.restarts": r},
                             {"step size": step, "restarts": r}))  # fmt: skip
    # The adaptive reference on the same model and digits.
    return out + [Point("eot_reference", {"eval.attacks": "eot"})]


register(Study(
    name="restarts",
    title="Table 25: PGD restarts x step sizes at a fixed number of steps",
    paper="100-step white-box BPDA PGD, 10 / 20 / 50 restarts x step 2 / 4 / 8 (of 255), "
    "ME-Net (adversarially trained) vs Madry et al.; an example is robust only if no restart "
    "fools it.",
    ours="BPDA PGD-40 (the demo's main PGD), 1 / 5 / 10 restarts x step 1 / 2 / 4 x eval.step_size "
    "(0.01 / 0.02 / 0.04 at eps 0.3), 200 test digits; per example the worst restart counts "
    "(docs/method.md §6.3); BPDA+EOT (40 steps, EOT 4) as a separate reference point. The "
    "restart points' headline is over clean and PGD only.",
    points=_restart_points,
    defaults={**ADAPTIVE, "eval.num_examples": 200, "eval.attacks": "pgd",
              "eval.pgd.steps": (40,)},
    columns=(Column("PGD, worst restart", "pgd_*"), EOT),
    plot=Lines("restarts", ("PGD, worst restart",), group="step size"),
    paper_adversarial=True,
))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# vote (Table 26)

VOTE_STEPS = (10, 40, 100)


def _vote_points(config):
    return [Point(f"steps{s}", {"eval.pgd.steps": (s,), "eval.vote.steps": s}, {"steps": s})
            for s in VOTE_STEPS]  # fmt: skip


register(Study(
    name="vote",
    title="Table 26: the k-mask majority vote against standard inference",
    paper="majority vote of 10 masks vs one mask under white-box BPDA PGD at 40 / 100 / 1,000 "
    "steps, all four datasets (white-box models adversarially trained).",
    ours="10-mask vote (me.votes) vs one fresh mask at 10 / 40 / 100 steps, 200 test digits: BPDA "
    "PGD judged by one mask and by the vote (the same images), APGD-CE aimed at the vote itself "
    "(as many iterations, docs/method.md §5.7), and BPDA+EOT (40 steps, EOT 4) in the headline.",
    points=_vote_points,
    defaults={**ADAPTIVE, "eval.num_examples": 200, "eval.attacks": "pgd,eot,vote",
              "eval.vote.examples": None, "me.votes": 10},
    columns=(Column("vote, clean", "vote_clean"), Column("PGD, one mask", "pgd_{steps}"),
             Column("PGD, vote", "vote_pgd_{steps}"), Column("APGD at the vote", "vote_apgd_ce"),
             EOT),
    plot=Lines("steps", ("PGD, one mask", "PGD, vote", "APGD at the vote", "headline"),
               xlabel="attack steps", logx=True),
    paper_adversarial=True,
))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# num_masks (Table 27)

MASKS = ((1, 0.9, 0.9, "high p"), (5, 0.8, 1.0, "high p"), (10, 0.8, 1.0, "high p"),
         (1, 0.5, 0.5, "low p"), (5, 0.4, 0.6, "low p"), (10, 0.4, 0.6, "low p"))  # fmt: skip

register(Study(
    name="num_masks",
    title="Table 27: the number of masks per training image",
    paper="CIFAR-10, 1 / 5 / 10 masks per training image; the one-mask rows use a single p (0.9 "
    "and 0.5), the others 0.8->1 and 0.4->0.6; clean / transfer PGD-40 / BPDA PGD-1000.",
    ours="the same grid with equal epochs of S' (so one mask trains on a tenth of the examples "
    "of ten), 300 test digits; transfer rows from a vanilla model trained alike, BPDA PGD-40 and "
    "BPDA+EOT (40 steps, EOT 4).",
    points=[Point(f"masks{n}_p{_label(a, b)}", {"me.num_masks": n, **_range(a, b)},
                  {"masks": n, "p": _label(a, b), "family": fam}, transfer=True)
            for n, a, b, fam in MASKS],
    defaults={**ADAPTIVE, "eval.num_examples": 300, "eval.attacks": "pgd,eot,transfer",
              "eval.pgd.steps": (40,), "eval.transfer.cw_l2_steps": 100},
    columns=(Column("transfer PGD", "transfer_pgd_*"), Column("PGD", "pgd_*"), EOT),
    plot=Lines("masks", ("clean", "transfer PGD", "PGD", "headline"), panel="family",
               xlabel="masks per training image"),
    paper_adversarial=True,
))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# defences (Tables 11 / 13)

DEFENCE_STEPS = (7, 20, 40, 100)  # Table 11's columns
PGD_COLUMNS = tuple(Column(f"PGD-{s}", f"pgd_{s}") for s in DEFENCE_STEPS)
DEFENCES = (
    Point("vanilla", {"me.method": "none"}, {"defence": "Vanilla", "type": "none"}),
    # Adversarial training alone, as the base config file's `madry` variant trains it.
    Point("madry", values={"defence": "Madry", "type": "Adv. train"}, variant="madry"),
    # Guo et al.'s drop rate 0.5, the network trained on TVM reconstructions as ME-Net on ME's.
    Point("tvm", {"me.method": "tvm", **_range(0.5, 0.5)},
          {"defence": "TV minimization", "type": "Prep."}),
    Point("usvt", {"me.method": "usvt"}, {"defence": "ME-Net (USVT)", "type": "Prep."}),
    Point("softimpute", {"me.method": "softimpute"},
          {"defence": "ME-Net (Soft-Impute)", "type": "Prep."}),
)  # fmt: skip

register(Study(
    name="defences",
    title="Tables 11/13: ME-Net against vanilla, Madry and TV minimization, trained alike",
    paper="Table 11 (CIFAR-10, eps 8/255, white-box BPDA PGD-7/20/40/100, pure preprocessing): "
    "vanilla 0.0 / 0.0 / 0.0 / 0.0%; TV minimization (re-implemented, trained as ME-Net) 14.7 / "
    "5.1 / 2.7 / 0.4%; ME-Net p 0.8->1 46.2 / 33.2 / 26.8 / 23.5%, p 0.4->0.6 59.8 / 52.6 / "
    "45.5 / 41.6%; Thermometer and PixelDefend quoted from Athalye et al. (rows below): \"ME-Net "
    "is the first preprocessing method to be effective under white-box attacks\". Madry et al. "
    "(Table 13, ResNet-18, their released model; clean, then 7/20/40/100/1,000 steps): 79.4, "
    "47.2 / 45.6 / 45.2 / 45.1 / 45.0%. On MNIST (Table 16, eps 0.3, clean, 40/100/1,000 "
    "steps): Madry 98.5, 93.2 / 91.8 / 91.6%; pure ME-Net p 0.4->0.6 98.4, 65.2 / 62.1 / 60.6%.",
    ours="five models trained the same way on the base config: vanilla, Madry (the config "
    "file's `madry` variant: adversarial training alone, no ME), TV minimization (me.method=tvm "
    "at p 0.5, Guo et al.'s drop rate) and ME-Net with USVT and with Soft-Impute (the base "
    "config's ME training otherwise identical); the paper's rows (BPDA PGD-7/20/40/100, step "
    "eps/4 as 2/255 at 8/255) beside BPDA+EOT (40 steps, EOT 4) and the headline over all; 300 "
    "test examples.",
    points=DEFENCES,
    defaults=lambda c: {**ADAPTIVE, "eval.num_examples": 300, "eval.attacks": "pgd,eot",
                        "eval.pgd.steps": DEFENCE_STEPS, "eval.step_size": c.eval.eps / 4},
    columns=(*PGD_COLUMNS, EOT),
    plot=Bars(("clean", *(c.label for c in PGD_COLUMNS), "BPDA+EOT", "headline")),
    quoted=(
        Quoted("Thermometer", "supplement Table 11, CIFAR-10, from Athalye et al. (2018)",
               {"defence": "Thermometer", "type": "Prep.", "PGD-40": "0.0%", "PGD-100": "0.0%"}),
        Quoted("PixelDefend", "supplement Table 11, CIFAR-10, from Athalye et al. (2018)",
               {"defence": "PixelDefend", "type": "Prep.", "PGD-100": "9.0%"}),
    ),
))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# noise (Fig. 10)

register(Study(
    name="noise",
    title="Fig. 10: adversarial noise before and after ME",
    paper="Tiny-ImageNet clean and PGD images and their difference, before and after ME "
    "(differences scaled up).",
    ours=f"the first {noise.NUM_IMAGES} test images of the base config's dataset and model, "
    "attacked with BPDA+EOT PGD at eval.eps (eval.eot budget); the same mask rebuilds the clean "
    "and the adversarial image, so the ME difference is what ME leaves of the noise.",
    points=[Point("model")],
    defaults={"eval.eot.steps": 40, "eval.eot.samples": 4},
    pictures=noise.draw,
))  # fmt: skip
