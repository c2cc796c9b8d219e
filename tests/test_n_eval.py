"""The N-evaluation (docs/method.md §6.8): correct on all of N fresh draws, against references.

The flags against a loop in numpy; the report's figures against hand-made draws; a randomised
toy classifier whose per-draw correctness probability q is known, where the all-N fraction must
match q^N and the N-evaluation's draws must be independent of the judging draws; a deterministic
model, where every all-N figure is the single-draw one; the config key and old files."""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from menet_jax import config as config_lib
from menet_jax import evaluation, rng
from menet_jax.config import ConfigError
from menet_jax.evaluation import n_eval, plots, protocol, report, settings, stats, suite
from menet_jax.evaluation.rows import Plan, Row


def reference_all_correct(draws: np.ndarray, ns) -> np.ndarray:
    """Correct on every one of the first N draws, one example and one N at a time."""
    m, n = draws.shape
    out = np.zeros((len(ns), n), bool)
    for k, big_n in enumerate(ns):
        for i in range(n):
            out[k, i] = all(bool(draws[r, i]) for r in range(big_n))
    return out


def test_all_correct_matches_a_loop_and_never_rises_with_n():
    gen = np.random.default_rng(0)
    for q in (0.3, 0.8, 0.97):
        draws = gen.random((20, 50)) < q
        ns = (1, 2, 5, 20)
        got = n_eval.all_correct(draws, ns)
        np.testing.assert_array_equal(got, reference_all_correct(draws, ns))
        np.testing.assert_array_equal(got[0], draws[0])  # N = 1: the first draw
        assert np.all(got[1:] <= got[:-1])  # correct on all N+k implies correct on all N
    with pytest.raises(ValueError, match="max\\(N\\) = 20"):
        n_eval.all_correct(np.ones((5, 3), bool), (1, 20))


def test_chosen_reads_the_restart_chosen_per_example():
    gen = np.random.default_rng(1)
    draws = gen.random((3, 6, 8)) < 0.7  # [restarts, M, n]
    restart = gen.integers(0, 3, 8)
    got = n_eval.chosen(draws, restart, (1, 6))
    for i in range(8):
        want = reference_all_correct(draws[restart[i], :, i : i + 1], (1, 6))[:, 0]
        np.testing.assert_array_equal(got[:, i], want)


def test_wilson_figures():
    flags = np.array([[1, 1, 0, 1], [1, 0, 0, 0]], bool)
    f = n_eval.figures(flags, (1, 5))
    assert f["1"]["accuracy"] == 0.75 and f["5"]["accuracy"] == 0.25 and f["5"]["n"] == 4
    lo, hi = stats.wilson(1, 4)
    assert f["5"]["interval"] == [round(lo, 4), round(hi, 4)]


def _hand_made(ns=(1, 3)):
    """Two counted rows (clean, pgd with 2 restarts) on 4 examples, R = 2, hand-made draws."""
    n, R, M = 4, 2, 3
    clean = np.ones((1, 2 * R, n), bool)
    pgd = np.ones((2, 2 * R, n), bool)
    pgd[0, R:, 0] = False  # restart 0 fools example 0 on the selection draws: chosen for it
    pgd[1, R:, 1] = False  # restart 1 fools example 1 on the selection draws
    all_clean = np.ones((1, M, n), bool)
    all_pgd = np.ones((2, M, n), bool)
    all_pgd[0, 2, 0] = False  # restart 0: example 0 wrong on its third fresh draw only
    all_pgd[1, 0, 0] = False  # restart 1 (not chosen for example 0): wrong on its first
    all_pgd[1, 1, 1] = False  # restart 1: example 1 wrong on its second draw
    all_clean[0, 0, 3] = False  # clean: example 3 wrong on its first fresh draw

    def result(correct, draws):
        fig = protocol.row_figures(**protocol.split_draws(correct, R))
        return {"correct": correct, "figures": fig, "all_draws": draws,
                "pred_varies": np.zeros(n, bool), "logits_vary": np.ones(n, bool)}  # fmt: skip

    ev = ml_collections.ConfigDict({"n_eval": tuple(ns)})
    plan = Plan(ev=ev, target=types.SimpleNamespace(randomized=True), source=None, n_all=n)
    plan.rows = [
        Row("clean", "clean", "none", n, {}, counted=True),
        Row("pgd_3", "pgd", "white-box", n, {"eps": 0.3}, counted=True, restarts=2),
    ]
    results = {"clean": result(clean, all_clean), "pgd_3": result(pgd, all_pgd)}  # fmt: skip
    return plan, results, R


def test_report_figures_follow_the_candidate_each_figure_chose(tmp_path):
    plan, results, R = _hand_made()
    out = report.build(plan, results, {"clean": 0.0, "pgd_3": 0.0}, runtime=None, top5=False,
                       num_classes=10, R=R)  # fmt: skip
    arrays = out.pop("_arrays")
    # pgd: example 0 -> restart 0 (wrong on draw 2 only), example 1 -> restart 1 (draw 1).
    np.testing.assert_array_equal(arrays["all_draws/pgd_3"], [[1, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(arrays["all_draws/clean"], [[1, 1, 1, 0], [1, 1, 1, 0]])
    # The headline takes pgd for examples 0 and 1 (the restart it chose) and clean's ties
    # elsewhere go to the strongest candidate on the selection draws (pgd's).
    h = out["headline"]
    assert h["decided_by"] == {"pgd_3": 4}
    np.testing.assert_array_equal(arrays["all_draws/headline"], [[1, 1, 1, 1], [0, 0, 1, 1]])
    assert h["all_draws"]["1"]["accuracy"] == 1.0 and h["all_draws"]["3"]["accuracy"] == 0.5
    assert out["attacks"]["pgd_3"]["all_draws"]["3"]["accuracy"] == 0.5
    assert out["clean"]["all_draws"]["1"]["accuracy"] == 0.75
    assert out["n_eval"] == {"n": [1, 3], "draws": 3, "randomized": True}
    assert out["schema_version"] == report.RESULTS_SCHEMA_VERSION == 5
    json.dumps(out)  # JSON-serialisable
    report.write_markdown(out, str(tmp_path / "results.md"))
    md = (tmp_path / "results.md").read_text()
    assert (
        "## Correct on all N draws" in md
        and "| Row | Examples | Single draw | All 1 | All 3 |" in md
    )
    assert "| **headline** | 4 | " in md and "50.00% (" in md
    assert "N = 3: 50.00%" in md.split("## Correct")[0]  # the line under the headline
    plots.plot_rows(out, str(tmp_path / "rows.png"))
    assert (tmp_path / "rows.png").stat().st_size > 0
    scalars = plots.eval_scalars(out)
    assert scalars["eval/headline_all_1"] == 1.0 and scalars["eval/headline_all_3"] == 0.5


def test_report_without_n_evaluation_has_no_all_n_figures(tmp_path):
    plan, results, R = _hand_made(ns=())
    out = report.build(plan, results, {"clean": 0.0, "pgd_3": 0.0}, runtime=None, top5=False,
                       num_classes=10, R=R)  # fmt: skip
    assert out["n_eval"] is None and "all_draws" not in out["headline"]
    assert not any(k.startswith("all_draws/") for k in out["_arrays"])
    out.pop("_arrays")
    report.write_markdown(out, str(tmp_path / "results.md"))
    assert "all N" not in (tmp_path / "results.md").read_text()
    plots.plot_rows(out, str(tmp_path / "rows.png"))


# ---------------------------------------------------------------------------------------------
# A randomised toy classifier: correct on a draw with probability Q, independently per draw.

Q, N_EXAMPLES = 0.9, 400


def keep_or_blank(key, x):
    """Keeps the image with probability Q, else blanks it (then the network is wrong)."""
    keep = jax.random.bernoulli(key, Q, (x.shape[0], 1, 1, 1))
    return jnp.where(keep, x, 0.0)


def mean_logits(x):  # class 1 iff the mean pixel is above 0.5
    m = jnp.mean(x.reshape(len(x), -1), axis=1)
    return jnp.stack([jnp.full_like(m, 0.5), m], axis=1)


@pytest.fixture(scope="module")
def toy():
    gen = np.random.default_rng(0)
    x = gen.uniform(0.6, 1.0, size=(N_EXAMPLES, 4, 4, 1)).astype(np.float32)
    y = np.ones(N_EXAMPLES, np.int32)
    return x, y


def _evaluate(workdir, x, y, **kw):
    return evaluation.evaluate_model(
        mean_logits, x, y, workdir=str(workdir), batch_size=N_EXAMPLES, progress_bar=False,
        overrides={"num_examples": N_EXAMPLES, "eval_keys": 2, "attacks": "clean"}, **kw,
    )  # fmt: skip


def test_randomised_toy_all_n_matches_q_to_the_n(toy, tmp_path):
    out = _evaluate(tmp_path, *toy, preprocess=keep_or_blank, randomized=True)
    h, n = out["headline"], N_EXAMPLES
    assert out["n_eval"] == {"n": [1, 5, 20], "draws": 20, "randomized": True}
    for big_n, fig in h["all_draws"].items():
        p = Q ** int(big_n)
        assert abs(fig["accuracy"] - p) <= 4 * np.sqrt(p * (1 - p) / n), (big_n, fig)
        assert fig["interval"][0] <= fig["accuracy"] <= fig["interval"][1]
    assert abs(h["accuracy"] - Q) <= 4 * np.sqrt(Q * (1 - Q) / (2 * n))  # single draw
    assert h["all_draws"]["20"]["accuracy"] < h["all_draws"]["5"]["accuracy"] < h["accuracy"]
    arrays = np.load(tmp_path / "results.npz")
    flags = arrays["all_draws/headline"]
    assert flags.shape == (3, n) and flags.dtype == bool and np.all(flags[1:] <= flags[:-1])
    np.testing.assert_array_equal(arrays["all_draws/clean"], flags)  # clean is the only row
    # Fresh draws: the N = 1 flag agrees with judging draw 0 about as often as two independent
    # draws do (Q^2 + (1 - Q)^2 = 0.82), not always, as it would on the same key.
    judged = arrays["draws/clean"][0]  # [2R, n]
    for r in range(judged.shape[0]):
        agree = float(np.mean(judged[r] == flags[0]))
        assert abs(agree - (Q**2 + (1 - Q) ** 2)) <= 0.1, (r, agree)
    md = (tmp_path / "results.md").read_text()
    assert "## Correct on all N draws" in md and "| clean | 400 |" in md


def test_all_draws_keys_are_their_own_stream():
    keys = suite.all_draws_keys(0, 4)
    judging = suite.judging_keys(0, 3)
    data = lambda k: set(map(tuple, np.asarray(jax.vmap(jax.random.key_data)(k)).tolist()))  # noqa: E731
    assert len(data(keys)) == 4 and not data(keys) & data(judging)
    root = jax.random.fold_in(rng.stream(0, rng.JUDGE), rng.ALL_DRAWS)
    want = jax.random.key_data(jax.random.fold_in(root, 2))
    np.testing.assert_array_equal(jax.random.key_data(keys[2]), want)
    np.testing.assert_array_equal(  # the first draws do not change with max(N)
        jax.random.key_data(suite.all_draws_keys(0, 20)[:4]), jax.random.key_data(keys)
    )


def test_deterministic_model_all_n_equals_the_single_draw(toy, tmp_path):
    x, y = toy
    y = y.copy()
    y[::3] = 0  # a third misclassified, on every draw
    out = _evaluate(tmp_path, x, y, preprocess=lambda z: z)
    h = out["headline"]
    assert out["n_eval"]["randomized"] is False
    for fig in h["all_draws"].values():
        assert fig["accuracy"] == h["accuracy"]
    assert "deterministic model" in (tmp_path / "results.md").read_text()


def test_n_eval_off(toy, tmp_path):
    x, y = toy
    out = evaluation.evaluate_model(
        mean_logits, x[:8], y[:8], workdir=str(tmp_path), batch_size=8, progress_bar=False,
        overrides={"num_examples": 8, "attacks": "clean", "n_eval": ()},
        preprocess=keep_or_blank, randomized=True,
    )  # fmt: skip
    assert out["n_eval"] is None and "all_draws" not in out["headline"]
    assert "all_draws/headline" not in np.load(tmp_path / "results.npz")


# ---------------------------------------------------------------------------------------------
# The config key and old files


@pytest.mark.parametrize("bad", [(0,), (5, 1), (1, 1), (1.5,), (True,), (-5,)])
def test_n_eval_refuses_what_is_not_increasing_positive_ints(bad):
    ev = settings.eval_config()
    ev.n_eval = bad
    with pytest.raises(ConfigError, match="config.eval.n_eval=.*strictly increasing positive"):
        settings.validate_eval(ev)


@pytest.mark.parametrize("good", [(), (1, 5, 20), [2], (3, 100)])
def test_n_eval_takes_increasing_positive_ints_or_nothing(good):
    ev = settings.eval_config()
    ev.n_eval = good
    settings.validate_eval(ev)
    assert tuple(settings.eval_config().n_eval) == (1, 5, 20)


def test_config_json_without_n_eval_reads_with_the_default():
    from tests.test_train import tiny_config

    c = json.loads(tiny_config().to_json())
    del c["eval"]["n_eval"]
    text = json.dumps({"schema_version": config_lib.SCHEMA_VERSION, "config": c})
    got = config_lib.from_json(text, source="config.json")
    assert list(got.eval.n_eval) == [1, 5, 20]
    settings.validate_eval(got.eval)


def test_study_points_keep_their_fingerprint_at_the_default():
    from menet_jax.study import core
    from tests.test_train import tiny_config

    c = tiny_config()
    c.eval.attacks = "pgd,eot"
    entry = core.Planned(point=None, config=c, model="m")
    fp = core.fingerprint(entry)
    assert "n_eval" not in fp["evaluation"]["eval"]  # as before the key existed
    assert "autoattack_rand" not in fp["evaluation"]["eval"]  # added later, and not run here
    c.eval.n_eval = (1, 10)
    assert core.fingerprint(entry)["evaluation"]["eval"]["n_eval"] == [1, 10]
    c.eval.attacks = "pgd,autoattack_rand"  # run: its budget is part of the fingerprint
    assert core.fingerprint(entry)["evaluation"]["eval"]["autoattack_rand"] == dict(
        c.eval.autoattack_rand
    )
