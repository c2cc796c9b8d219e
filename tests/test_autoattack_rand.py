"""AutoAttack's 'rand' protocol with its own judging (menet_jax/evaluation/autoattack.py).

The closed form: a randomised classifier that classifies each example correctly on each draw
with probability Q, whatever its input, so no attack changes anything. AutoAttack's verdict (a
clean draw, then one fresh draw after APGD-CE, then one after APGD-DLR, fooled stays fooled) is
robust with probability Q^3; the expected single-draw accuracy of its images, and the
headline, is Q. Then the state file against AutoAttack's `EvaluationState` fields, APGD's
single-draw rule on a deterministic model, and the config's one-sentence errors.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import evaluation
from menet_jax.attacks import apgd
from menet_jax.config import ConfigError
from menet_jax.evaluation import autoattack
from menet_jax.evaluation.settings import eval_config, validate_eval

Q = 0.8  # per draw and example: the chance of a correct prediction
N, R = 1200, 5  # examples, measuring draws (as many more select)


def coin(key, x):
    """A randomised preprocessing that ignores x: 1 everywhere with probability Q per example
    (independently per example and key), else 0."""
    ok = jax.random.uniform(key, (x.shape[0],)) < Q
    return x * 0 + ok[:, None, None, None].astype(x.dtype)


def three_classes(x):
    """Class 0 (every label) on an image of ones, class 1 on zeros; a third class for DLR."""
    m = jnp.mean(x, axis=(1, 2, 3))
    return jnp.stack([2 * m, 2 - 2 * m, jnp.zeros_like(m)], axis=-1)  # not probabilities


def within(observed: float, p: float, trials: int, z: float = 4.5) -> bool:
    """observed is a Binomial(trials, p) fraction within z standard deviations of p."""
    return abs(observed - p) <= z * math.sqrt(p * (1 - p) / trials)


@pytest.fixture(scope="module")
def coin_report(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("coin")
    x = np.full((N, 2, 2, 1), 0.5, np.float32)
    y = np.zeros(N, np.int32)
    over = {"num_examples": N, "eval_keys": R, "eps": 0.1, "attacks": "autoattack_rand",
            "autoattack_rand.steps": 3, "autoattack_rand.eot_samples": 2}  # fmt: skip
    report = evaluation.evaluate_model(three_classes, x, y, workdir=str(workdir),
                                       preprocess=coin, randomized=True, overrides=over,
                                       batch_size=400, progress_bar=False)  # fmt: skip
    return report, workdir


def test_autoattack_judging_gives_the_product_and_ours_the_single_draw_rate(coin_report):
    report, workdir = coin_report
    a = report["autoattack_rand"]
    assert a["n"] == N and a["label"] == "AutoAttack (rand), its own judging"
    assert not a["in_headline"] and "autoattack_rand" not in report["headline"]["rows"]
    # AutoAttack: each stage one independent draw, survivors only: Q, Q^2, Q^3.
    assert within(a["clean_accuracy"], Q, N)
    assert within(a["after_apgd_ce"], Q**2, N)
    assert within(a["accuracy"], Q**3, N), (a["accuracy"], Q**3)
    # Its images judged on R fresh draws each, and the headline (clean): Q.
    assert within(a["fresh_draws"]["accuracy"], Q, N * R)
    assert within(report["headline"]["accuracy"], Q, N * R)
    assert a["headline_same_examples"]["accuracy"] == report["headline"]["accuracy"]
    # The separation the test rests on: far outside either bound.
    assert a["fresh_draws"]["accuracy"] - a["accuracy"] > 0.2
    assert not a["autoattack_budget"] and (a["steps"], a["eot_samples"]) == (3, 2)
    md = (workdir / "results.md").read_text()
    assert (
        "**AutoAttack (rand), its own judging:" in md and "cut budget (3 iterations x EOT 2)" in md
    )
    assert "q^3" in md and "autoattack_state.json" in md


@dataclasses.dataclass
class EvaluationState:
    """The fields of AutoAttack's `autoattack/state.py` `EvaluationState`, in its order, as read
    from fra31/auto-attack (the torch tensor of flags as a numpy array here)."""

    _attacks_to_run: set
    path: str | None = None
    _run_attacks: set = dataclasses.field(default_factory=set)
    _robust_flags: np.ndarray | None = None
    _last_saved: datetime.datetime = datetime.datetime(1, 1, 1)
    _SAVE_TIMEOUT: int = 60
    _clean_accuracy: float = float("nan")


def test_state_file_has_autoattacks_fields_and_the_flags(coin_report):
    report, workdir = coin_report
    path = os.path.join(str(workdir), "autoattack_state.json")
    with open(path) as f:
        d = json.load(f)
    names = [f.name for f in dataclasses.fields(EvaluationState)]
    assert list(d) == names
    # As AutoAttack's from_disk parses it: flags to bools, _last_saved by fromisoformat.
    d["_robust_flags"] = np.asarray(d["_robust_flags"], bool)
    d["_last_saved"] = datetime.datetime.fromisoformat(d["_last_saved"])
    state = EvaluationState(**d)
    flags = np.load(os.path.join(str(workdir), "results.npz"))["autoattack_rand/robust"]
    np.testing.assert_array_equal(state._robust_flags, flags)
    assert state._robust_flags.shape == (N,)
    assert round(float(state._robust_flags.mean()), 4) == report["autoattack_rand"]["accuracy"]
    assert state._clean_accuracy == report["autoattack_rand"]["clean_accuracy"]
    assert set(state._attacks_to_run) == set(state._run_attacks) == {"apgd-ce", "apgd-dlr"}
    assert state.path == path
    assert abs((datetime.datetime.now() - state._last_saved).total_seconds()) < 3600
    back = autoattack.read_state(path)
    np.testing.assert_array_equal(back["_robust_flags"], flags)


def linear3(seed=0):
    """A deterministic 3-class linear model on 4x4x1 images, its weights for numpy."""
    w = np.random.default_rng(seed).normal(size=(16, 3)).astype(np.float32)

    def logits_fn(x, key):
        return x.reshape(len(x), -1) @ jnp.asarray(w)

    return logits_fn, w


def test_single_draw_apgd_keeps_a_fooling_iterate_else_x():
    logits_fn, w = linear3()
    x = np.random.default_rng(1).uniform(0, 1, (64, 4, 4, 1)).astype(np.float32)
    y = np.argmax(x.reshape(64, -1) @ w, -1).astype(np.int32)  # all correct at x
    opts = dict(eps=0.08, steps=10, loss="ce")
    key = jax.random.key(3)
    single = np.asarray(apgd(logits_fn, x, y, key, return_best="single_draw", **opts))
    majority = np.asarray(apgd(logits_fn, x, y, key, return_best="adversarial", **opts))
    fooled = np.argmax(single.reshape(64, -1).astype(np.float64) @ w, -1) != y
    assert 0 < fooled.sum() < 64  # both outcomes occur
    # With one draw the last draw is the majority: the same fooling iterate; else x itself.
    np.testing.assert_array_equal(single[fooled], majority[fooled])
    np.testing.assert_array_equal(single[~fooled], x[~fooled])
    assert np.abs(single - x).max() <= 0.08 + 1e-6


def test_autoattack_rand_fools_an_easy_model_within_eps():
    logits_fn, w = linear3()
    x = np.random.default_rng(2).uniform(0.3, 0.7, (32, 4, 4, 1)).astype(np.float32)
    y = np.argmax(x.reshape(32, -1) @ w, -1).astype(np.int32)
    x_adv, flags = autoattack.autoattack_rand(logits_fn, x, y, jax.random.key(0), eps=0.3,
                                              steps=10, eot_samples=1)  # fmt: skip
    x_adv = np.asarray(x_adv)
    wrong = np.argmax(x_adv.reshape(32, -1).astype(np.float64) @ w, -1) != y
    assert np.asarray(flags["clean"]).all() and not np.asarray(flags["robust"]).any()
    assert wrong.all() and np.abs(x_adv - x).max() <= 0.3 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("steps", 0, "config.eval.autoattack_rand.steps=0 is not allowed"),
        ("eot_samples", 0, "config.eval.autoattack_rand.eot_samples=0 is not allowed"),
        ("examples", -1, "config.eval.autoattack_rand.examples=-1 is not allowed"),
    ],
)
def test_bad_budget_is_one_sentence(key, value, fragment):
    ev = eval_config()
    assert (ev.autoattack_rand.steps, ev.autoattack_rand.eot_samples) == (100, 20)
    ev.autoattack_rand[key] = value
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")) as e:
        validate_eval(ev)
    assert "\n" not in str(e.value)


def test_eps_zero_changes_nothing_on_a_deterministic_model():
    logits_fn, w = linear3(1)
    x = np.random.default_rng(4).uniform(0, 1, (32, 4, 4, 1)).astype(np.float32)
    y = np.random.default_rng(5).integers(0, 3, 32).astype(np.int32)
    x_adv, flags = autoattack.autoattack_rand(logits_fn, x, y, jax.random.key(1), eps=0.0,
                                              steps=5, eot_samples=1)  # fmt: skip
    right = np.argmax(x.reshape(32, -1).astype(np.float64) @ w, -1) == y
    assert 0 < right.sum() < 32
    np.testing.assert_array_equal(np.asarray(x_adv), x)
    for f in autoattack.FLAGS:  # one draw of a deterministic model is its prediction
        np.testing.assert_array_equal(np.asarray(flags[f]), right)


@pytest.mark.parametrize("fresh, expected", [(0.65, "comes from its judging"),
                                             (0.50, "missed an attack")])  # fmt: skip
def test_paragraph_says_which_way_the_images_compare(fresh, expected):
    a = {"label": autoattack.LABEL, "accuracy": 0.455, "interval": [0.39, 0.52], "n": 200,
         "clean_accuracy": 0.97, "after_apgd_ce": 0.555, "steps": 100, "eot_samples": 20,
         "autoattack_budget": True, "state_file": autoattack.STATE_FILE,
         "fresh_draws": {"accuracy": fresh},
         "headline_same_examples": {"accuracy": 0.55, "n": 200}}  # fmt: skip
    text = "\n".join(autoattack.markdown({"autoattack_rand": a}))
    assert expected in text and "cut budget" not in text and "**AutoAttack (rand)" in text
    assert autoattack.markdown({}) == []
