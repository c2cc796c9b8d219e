"""`evaluation.evaluate_model` on a small Flax NNX classifier defined here: no preprocessing, a
deterministic one, a randomised one; a closed form of a linear model's robust accuracy; one
sentence for every bad input; the README's example as written."""

from __future__ import annotations

import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from menet_jax import evaluation
from menet_jax.config import ConfigError
from menet_jax.evaluation import InputError

EPS, STEPS, STEP_SIZE = 0.05, 8, 0.02  # 8 steps of 0.02 cross the ball twice: PGD ends at a corner
N = 24


def linear_model():
    """A 2-class NNX linear model on 8x8x1 images, its weight difference d = w1 - w0 and bias
    difference, with the bias centring the margins of the test images on 0."""
    rng = np.random.default_rng(0)
    model = nnx.Linear(64, 2, rngs=nnx.Rngs(0))
    w = rng.normal(size=(64, 2)).astype(np.float32) * 0.5
    d = w[:, 1] - w[:, 0]
    model.kernel[...] = jnp.asarray(w)
    model.bias[...] = jnp.asarray([0.5 * d.sum(), 0.0], jnp.float32)
    return model, d, -0.5 * d.sum()


MODEL, D, B = linear_model()


def logits_fn(x):
    return MODEL(x.reshape(len(x), -1))


def data():
    """N images inside [EPS, 1 - EPS] (the box never binds the attack), labels by the model's
    sign with two flipped, and no example within 0.1 of the robustness threshold."""
    rng = np.random.default_rng(1)
    pool = rng.uniform(EPS, 1 - EPS, size=(400, 8, 8, 1)).astype(np.float32)
    s = pool.reshape(400, -1).astype(np.float64) @ D + B  # logit 1 - logit 0
    far = np.abs(np.abs(s) - EPS * np.abs(D).sum()) > 0.1
    x, s = pool[far][:N], s[far][:N]
    y = (s > 0).astype(np.int32)
    y[:2] = 1 - y[:2]  # misclassified: never robust
    return x, y, s


X, Y, S = data()


def closed_form_robust(eps: float) -> np.ndarray:
    """A 2-class linear model with the box inactive: robust iff margin > eps * ||w1 - w0||_1."""
    margin = np.where(Y == 1, S, -S)
    return (margin > eps * np.abs(D).sum()).astype(np.float32)


def tiny(**extra):
    """Every row at budgets of a few steps on the N examples."""
    return {
        "num_examples": N, "eval_keys": 2, "eps": EPS, "step_size": STEP_SIZE,
        "pgd.steps": (STEPS,), "pgd.long_steps": STEPS + 2, "pgd.long_examples": 8,
        "cw.kappas": (20.0,), "eot.steps": 3, "eot.samples": 2,
        "apgd.steps": 3, "apgd.eot_samples": 2, "spsa.examples": 4, "spsa.steps": 2,
        "spsa.samples": 8, "boundary.examples": 4, "boundary.steps": 3, "boundary.proposals": 2,
        "vote.examples": 8, "vote.steps": 2, "sanity.examples": 8,
        "sanity.eps_multipliers": (0.0, 1.0, 4.0), **extra,
    }  # fmt: skip


def run(workdir, attacks="all", **kw):
    return evaluation.evaluate_model(logits_fn, X, Y, workdir=str(workdir), batch_size=N,
                                     overrides=tiny(attacks=attacks), votes=3,
                                     progress_bar=False, **kw)  # fmt: skip


def quantize(x):  # deterministic, zero gradient almost everywhere: attacked with BPDA
    return jnp.round(x * 4) / 4


def mask_and_fill(key, x):  # randomised: keep each pixel with probability 0.6, the rest the mean
    keep = jax.random.bernoulli(key, 0.6, x.shape)
    total = jnp.maximum(jnp.sum(keep, axis=(1, 2, 3), keepdims=True), 1)
    return jnp.where(keep, x, jnp.sum(x * keep, axis=(1, 2, 3), keepdims=True) / total)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_model")
    some = "fgsm,pgd,eot,graybox,network_only,vote,sanity"  # every kind a model may lack
    return {
        "none": (run(root / "none", some), root / "none"),
        "identity": (run(root / "identity", "pgd", preprocess=lambda x: x), root / "identity"),
        "deterministic": (run(root / "det", some, preprocess=quantize), root / "det"),
        "randomized": (
            run(root / "rand", preprocess=mask_and_fill, randomized=True, differentiable=True),
            root / "rand",
        ),
    }


def _check_files(report, workdir):
    assert 0 <= report["headline"]["accuracy"] <= 1
    with open(workdir / "results.json") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    arrays = np.load(workdir / "results.npz")
    assert arrays["headline"].shape == (report["headline"]["n"],)
    for name, a in report["attacks"].items():
        assert round(float(arrays[name].mean()), 4) == a["accuracy"], name
    md = (workdir / "results.md").read_text()
    assert "evaluate_model" in md and "## Sanity checks" in md


@pytest.mark.parametrize("kind", ["none", "deterministic", "randomized"])
def test_each_kind_of_preprocessing_writes_the_report(reports, kind):
    report, workdir = reports[kind]
    _check_files(report, workdir)
    assert report["user_model"]["preprocessing"] == kind
    rows, skipped = set(report["attacks"]), report["skipped"]["rows"]
    assert {"fgsm", f"pgd_{STEPS}", "sweep_eps_x0", "sweep_eps_x4"} <= rows
    if kind == "none":
        for kind_ in ("eot", "graybox", "network_only", "vote", "no_me_pgd", "fixed_mask_pgd"):
            assert kind_ in skipped, kind_
        assert "no preprocessing" in skipped["graybox"]
    if kind == "deterministic":
        assert {"graybox", "network_only", "no_me_pgd"} <= rows
        for kind_ in ("eot", "vote", "fixed_mask_pgd"):
            assert "deterministic" in skipped[kind_], kind_
        assert report["eval_keys"] == 1  # one draw measures, one selects
    if kind != "randomized":
        assert report["checks"]["randomness"]["status"] == "PASS"  # every draw the same
        assert "fixed_mask_attack_succeeds" in report["skipped"]["checks"]
    else:
        assert {"bpda_eot", "vote_apgd_ce", "fixed_mask_pgd", "graybox", "cw_k20", "spsa"} <= rows
        assert {"apgd_ce", "boundary", "network_only", "no_me_pgd"} <= rows
        assert "apgd_dlr" not in rows  # DLR needs 3 classes: dropped, and said so
        assert any("APGD" in note for note in report["user_model"]["adapted"])
        assert "transfer" in skipped
        assert report["eval_keys"] == 2 and report["user_model"]["gradient"] == "exact"
        assert report["attacks"]["bpda_eot"]["params"]["eot_samples"] == 2
        assert report["checks"]["randomness"]["value"] > 0


def test_pgd_on_the_linear_model_equals_its_closed_form(reports):
    report, workdir = reports["none"]
    arrays = np.load(workdir / "results.npz")
    robust = closed_form_robust(EPS)
    assert 0 < robust.sum() < N - 2  # some robust, some not
    for row in (f"pgd_{STEPS}", "fgsm"):  # both reach the ball's worst corner
        np.testing.assert_array_equal(arrays[row], robust, err_msg=row)
    np.testing.assert_array_equal(arrays["clean"], closed_form_robust(0.0))


def test_bpda_through_the_identity_equals_no_preprocessing(reports):
    (none, none_dir), (ident, ident_dir) = reports["none"], reports["identity"]
    row = f"pgd_{STEPS}"
    assert ident["attacks"][row]["accuracy"] == none["attacks"][row]["accuracy"]
    assert ident["attacks"][row]["threat"] == "white-box BPDA"
    a, b = np.load(none_dir / "results.npz"), np.load(ident_dir / "results.npz")
    np.testing.assert_array_equal(a[row], b[row])
    np.testing.assert_array_equal(a[f"draws/{row}"], b[f"draws/{row}"])


def _probabilities(x):
    return jax.nn.softmax(logits_fn(x))


def _nan(x):
    return logits_fn(x) * jnp.nan


BAD = {
    "probabilities": (dict(logits_fn=_probabilities), "returns probabilities"),
    "nan": (dict(logits_fn=_nan), "NaN or inf"),
    "x above 1": (dict(x=X * 2), r"must be in \[0, 1\]"),
    "x below 0": (dict(x=X - 0.5), r"must be in \[0, 1\]"),
    "uint8 as float": (dict(x=np.round(X * 255)), "uint8 pixels given as floats"),
    "x int64": (dict(x=(X * 255).astype(np.int64)), "dtype int64"),
    "labels out of range": (dict(y=Y + 1), r"labels in \[0, 2\)"),
    "negative labels": (dict(y=Y - 1), r"labels in \[0, 2\)"),
    "float labels": (dict(y=Y.astype(np.float32)), "integer class labels"),
    "lengths": (dict(y=Y[:-1]), "differ in length"),
    "rank": (dict(x=X[..., 0]), "rank 4"),
    "randomized flag": (dict(preprocess=quantize, randomized=True), "randomized=False"),
    "preprocess output": (dict(preprocess=lambda x: x[:, :4]), "input's shape"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_input_is_one_sentence_before_any_attack(case, tmp_path):
    kw, match = BAD[case]
    kw = {"logits_fn": logits_fn, "x": X, "y": Y, **kw}
    with pytest.raises(InputError, match=match) as info:
        evaluation.evaluate_model(kw.pop("logits_fn"), kw.pop("x"), kw.pop("y"),
                                  workdir=str(tmp_path / "w"), **kw)  # fmt: skip
    message = str(info.value)
    assert "\n" not in message and not message.endswith(".") and len(message) < 300
    assert isinstance(info.value, ValueError)
    assert not os.path.exists(tmp_path / "w")  # nothing ran, nothing written


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(overrides={"pgd.stepz": 3}), "not an eval key"),
        (dict(overrides={"eps": -1.0}), "eval.eps"),
        (dict(overrides={"gradient": "exact"}, preprocess=quantize), "differentiable=True"),
        (dict(votes=0), "votes=0"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_a_bad_setting_is_one_sentence(kw, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        evaluation.evaluate_model(logits_fn, X, Y, workdir=str(tmp_path / "w"), **kw)


README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- evaluate_model example: tests/test_evaluate_model.py runs it -->"


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    assert MARKER in text
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (the README's own code)
    report = namespace["report"]
    assert 0 <= report["headline"]["accuracy"] <= 1
    assert (tmp_path / "eval_brightness" / "results.json").exists()
    assert "headline" in capsys.readouterr().out


def test_params_and_a_config_of_ones_own(tmp_path):
    """logits_fn(params, x) with params traced (the Linen way), and an eval section passed
    whole: the FGSM row is the closed form again."""
    from menet_jax.evaluation import settings

    params = {"w": jnp.asarray(MODEL.kernel[...]), "b": jnp.asarray(MODEL.bias[...])}

    def apply(p, x):
        return x.reshape(len(x), -1) @ p["w"] + p["b"]

    ev = settings.eval_config()
    ev.attacks, ev.eps, ev.num_examples = "fgsm", EPS, N
    report = evaluation.evaluate_model(apply, X, Y, workdir=str(tmp_path), params=params,
                                       config=ev, batch_size=N, progress_bar=False)  # fmt: skip
    arrays = np.load(tmp_path / "results.npz")
    np.testing.assert_array_equal(arrays["fgsm"], closed_form_robust(EPS))
    assert report["attacks"]["fgsm"]["params"]["eps"] == EPS and ev.eval_keys == 5  # not changed
