"""The evaluation suite on tiny trained models; the statistics against hand-made references."""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from menet_jax import checkpoint, evaluation, train
from menet_jax.evaluation import protocol, sanity, stats
from menet_jax.evaluation.rows import Role
from tests.test_train import tiny_config

N = 16  # every row runs on the same 16 examples, so one compile per attack


def shrink_eval(c, n, s=3):
    """Every row of c's evaluation on the same n examples at budgets of about s steps."""
    c.eval_batch_size = n
    ev = c.eval
    ev.num_examples, ev.eval_keys, ev.pgd.steps, ev.pgd.long_steps = n, 3, (s,), s + 2
    for kind in ("spsa", "boundary", "vote", "sanity"):
        ev[kind].examples = n
    ev.pgd.long_examples = n
    ev.eot.samples, ev.eot.steps = 2, s
    ev.spsa.steps, ev.spsa.samples = 2, 8
    ev.boundary.steps, ev.boundary.proposals, c.me.votes = s + 2, 3, 3
    ev.apgd.steps, ev.apgd.eot_samples, ev.transfer.cw_l2_steps, ev.vote.steps = s + 1, 2, s, s
    ev.autoattack_rand.steps, ev.autoattack_rand.eot_samples = s + 1, 2
    return c


def eval_config(**overrides):
    return shrink_eval(tiny_config(**overrides), N)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    me_dir = str(tmp_path_factory.mktemp("menet"))
    vanilla_dir = str(tmp_path_factory.mktemp("vanilla"))
    train.train_and_evaluate(tiny_config(), me_dir)
    train.train_and_evaluate(tiny_config(**{"me.method": "none"}), vanilla_dir)
    return me_dir, vanilla_dir


@pytest.fixture(scope="module")
def me_report(workdirs):
    me_dir, vanilla_dir = workdirs
    c = eval_config()
    c.eval.transfer.source_workdir = vanilla_dir
    return evaluation.evaluate(c, me_dir)


EXPECTED_ROWS = [
    "fgsm", "pgd_3", "pgd_long_5", "cw_k20", "cw_k50", "bpda_eot", "network_only", "graybox",
    "transfer_fgsm", "transfer_pgd_3", "transfer_cw_k20", "transfer_cw_l2_c20", "spsa",
    "boundary", "vote_clean", "apgd_ce", "apgd_dlr", "vote_pgd_3", "vote_apgd_ce",
    "sweep_eps_x0", "sweep_eps_x0.25", "sweep_eps_x0.5", "sweep_eps_x1",
    "sweep_eps_x2", "sweep_eps_x4", "no_me_pgd", "fixed_mask_pgd", "autoattack_rand",
]  # fmt: skip
EXPECTED_CHECKS = [
    "eps0_unchanged", "monotone_in_eps", "large_eps_near_chance", "pgd_at_least_fgsm",
    "blackbox_weaker_than_whitebox", "whitebox_at_least_graybox", "no_me_attack_succeeds",
    "fixed_mask_attack_succeeds",
    "eot_at_least_bpda", "more_steps_not_weaker", "zero_gradient", "logits_not_probabilities",
    "randomness",
]  # fmt: skip


def test_report_has_every_row_check_and_budget(me_report, workdirs):
    r = me_report
    assert sorted(r["attacks"]) == sorted(EXPECTED_ROWS)
    assert sorted(r["checks"]) == sorted(EXPECTED_CHECKS)
    with open(os.path.join(workdirs[0], "results.json")) as f:
        assert json.load(f) == json.loads(json.dumps(r))  # JSON-serialisable, written as is
    assert r["schema_version"] == 5
    accs = [r["clean"]["accuracy"], r["headline"]["accuracy"]]
    accs += [a["accuracy"] for a in r["attacks"].values()]
    assert all(0 <= a <= 1 for a in accs)
    for name, a in r["attacks"].items():
        assert a["params"]["examples"] == N and "eps" in a["params"], name
        assert r["budgets"]["rows"][name]["seconds"] >= 0
    for c in r["checks"].values():
        assert c["status"] in ("PASS", "WARN") and c["detail"]
    # The R draws make an ME-Net's logits differ; the demo's checks all hold on a tiny model.
    assert r["checks"]["randomness"]["status"] == "PASS"
    assert r["attacks"]["bpda_eot"]["params"]["eot_samples"] == 2
    assert r["attacks"]["boundary"]["unbounded_success_rate"] >= 0
    # Roles are written as the strings of rows.Role, the same as before they were an enum.
    roles = {name: a["role"] for name, a in r["attacks"].items()}
    assert roles["pgd_3"] == "reference" and roles["fgsm"] == "fgsm"
    assert roles["graybox"] == "graybox" and roles["spsa"] == "blackbox"
    assert roles["sweep_eps_x1"] == "sweep" and roles["pgd_long_5"] == "long"
    assert set(roles.values()) <= {None, "reference", "fgsm", "long", "eot", "graybox",
                                   "blackbox", "sweep", "no_me", "fixed_mask"}  # fmt: skip


def test_headline_covers_the_counted_rows_and_is_saved_per_example(me_report, workdirs):
    r = me_report
    h = r["headline"]
    counted = sorted(["clean"] + [n for n, a in r["attacks"].items() if a["in_headline"]])
    assert h["rows"] == counted and h["n"] == N
    assert "pgd_3" in counted and "bpda_eot" in counted and "graybox" in counted
    assert "apgd_ce" in counted and "apgd_dlr" in counted
    for diagnostic in ("spsa", "boundary", "transfer_cw_l2_c20", "pgd_long_5", "vote_clean",
                       "autoattack_rand"):  # fmt: skip
        assert diagnostic not in counted
    assert sum(h["decided_by"].values()) == N
    assert h["interval"][0] <= h["accuracy"] <= h["interval"][1]
    arrays = np.load(os.path.join(workdirs[0], "results.npz"))
    assert arrays["headline"].shape == (N,)
    assert round(float(arrays["headline"].mean()), 4) == h["accuracy"]
    for name, a in r["attacks"].items():
        assert round(float(arrays[name].mean()), 4) == a["accuracy"], name
        assert np.all((arrays[name] >= 0) & (arrays[name] <= 1))
    for name in h["decided_by"]:  # the images that decide the headline are kept
        if name != "clean":
            assert arrays[f"adversarial/{name}"].shape[1:] == (N, 28, 28, 1)
    # The N-evaluation (docs/method.md §6.8): counted rows and the headline, flags per example.
    assert r["n_eval"] == {"n": [1, 5, 20], "draws": 20, "randomized": True}
    for name, entry in [("headline", h), ("clean", r["clean"]), *r["attacks"].items()]:
        if name != "headline" and not entry["in_headline"]:
            assert "all_draws" not in entry and f"all_draws/{name}" not in arrays, name
            continue
        flags = arrays[f"all_draws/{name}"]
        assert flags.shape == (3, N) and np.all(flags[1:] <= flags[:-1]), name
        for k, n_draws in enumerate(("1", "5", "20")):
            assert entry["all_draws"][n_draws]["accuracy"] == round(float(flags[k].mean()), 4)


def test_autoattack_rand_sits_beside_the_headline_with_its_state_file(me_report, workdirs):
    a, arrays = me_report["autoattack_rand"], np.load(os.path.join(workdirs[0], "results.npz"))
    clean, after_ce, robust = (arrays[f"autoattack_rand/{f}"] for f in
                               ("clean", "after_apgd_ce", "robust"))  # fmt: skip
    assert robust.shape == (N,) and robust.dtype == bool
    assert np.all(robust <= after_ce) and np.all(after_ce <= clean)  # fooled stays fooled
    assert a["accuracy"] == round(float(robust.mean()), 4) and a["n"] == N
    assert a["fresh_draws"]["accuracy"] == me_report["attacks"]["autoattack_rand"]["accuracy"]
    assert (a["steps"], a["eot_samples"], a["autoattack_budget"]) == (4, 2, False)
    assert not me_report["attacks"]["autoattack_rand"]["in_headline"]
    with open(os.path.join(workdirs[0], "autoattack_state.json")) as f:
        state = json.load(f)
    assert state["_robust_flags"] == robust.tolist() and state["_clean_accuracy"] == float(
        a["clean_accuracy"]
    )
    with open(os.path.join(workdirs[0], "results.md")) as f:
        md = f.read()
    assert md.index("**Headline robust accuracy") < md.index("**AutoAttack (rand), its own judging")


def test_crosscheck_adds_an_independent_attack_to_the_same_headline(
    me_report, workdirs, monkeypatch
):
    from menet_jax.evaluation import crosscheck

    out = crosscheck.run(workdirs[0], steps=2, eot=2, batch_size=N)
    # Recomputed from results.npz with the same estimator, the stored headline comes back.
    assert out["headline_before"] == me_report["headline"]["accuracy"] and out["n"] == N
    assert sorted(out["rows"]) == ["crosscheck_ce_bpda", "crosscheck_margin_bpda"]
    assert 0 <= out["headline_after"] <= 1
    assert os.path.exists(os.path.join(workdirs[0], "crosscheck.json"))
    assert not out["reused"]

    # Run again with the same attack: the stored variants are reused, not attacked again.
    def no_attack(*args, **kwargs):
        raise AssertionError("attacked again although crosscheck.npz holds the same variants")

    monkeypatch.setattr(crosscheck, "momentum_attack", no_attack)
    again = crosscheck.run(workdirs[0], steps=2, eot=2, batch_size=N)
    assert again["reused"] and again["headline_after"] == out["headline_after"]
    assert again["rows"] == out["rows"]
    with pytest.raises(AssertionError, match="attacked again"):  # another attack is run
        crosscheck.run(workdirs[0], steps=3, eot=2, batch_size=N)
    # The stored variants belong to the weights: one changed weight is another signature.
    state = checkpoint.load(workdirs[0]).state
    leaves, tree = jax.tree_util.tree_flatten(state)
    changed = jax.tree_util.tree_unflatten(tree, [np.asarray(leaves[0]) + 1e-6, *leaves[1:]])
    assert crosscheck._digest(changed) != crosscheck._digest(state)


def test_eps0_row_equals_clean(me_report):
    # Same examples, same judging draws, x_adv == x: the predictions are identical.
    assert me_report["attacks"]["sweep_eps_x0"]["accuracy"] == me_report["clean"]["accuracy"]
    assert me_report["checks"]["eps0_unchanged"]["status"] == "PASS"
    # The x1 sweep row re-judges the main PGD images with the same draws.
    assert (
        me_report["attacks"]["sweep_eps_x1"]["accuracy"]
        == me_report["attacks"]["pgd_3"]["accuracy"]
    )


def test_markdown_has_table_and_checks(me_report, workdirs):
    with open(os.path.join(workdirs[0], "results.md")) as f:
        md = f.read()
    assert "| Attack | Threat model | eps |" in md
    assert "| pgd_3 | white-box BPDA |" in md
    assert "## Sanity checks" in md and "## Budgets" in md
    for name, c in me_report["checks"].items():
        assert f"| {name} | {c['status']} |" in md


def test_vanilla_large_eps_pgd_and_missing_me(workdirs):
    c = eval_config()
    c.eval.attacks = "pgd,eot,vote,graybox,sanity"
    c.eval.eps, c.eval.step_size = 1.0, 0.5  # any image is reachable
    r = evaluation.evaluate(c, workdirs[1])
    assert r["attacks"]["pgd_3"]["accuracy"] <= 1 / N
    assert r["checks"]["large_eps_near_chance"]["status"] == "PASS"
    for row in ("eot", "vote", "graybox", "no_me_pgd", "fixed_mask_pgd"):
        assert row in r["skipped"]["rows"]
    for check in ("eot_at_least_bpda", "no_me_attack_succeeds", "fixed_mask_attack_succeeds"):
        assert check in r["skipped"]["checks"] and check not in r["checks"]
    # A deterministic model: every draw gives the same logits.
    assert r["checks"]["randomness"]["status"] == "PASS"
    assert r["checks"]["randomness"]["value"] == 0.0
    # Every draw the same: correct on all N draws is the single-draw figure.
    assert r["n_eval"]["randomized"] is False
    assert {f["accuracy"] for f in r["headline"]["all_draws"].values()} == {
        r["headline"]["accuracy"]
    }


def test_clean_only_is_clean_only(workdirs):
    c = eval_config()
    c.eval.attacks = "clean"
    r = evaluation.evaluate(c, workdirs[0])
    assert r["attacks"] == {} and r["headline"]["accuracy"] == r["clean"]["accuracy"]


def test_user_errors(workdirs, tmp_path):
    c = eval_config()
    c.eval.attacks = "pgd,foo"
    with pytest.raises(ValueError, match="config.eval.attacks"):
        evaluation.evaluate(c, workdirs[0])
    c = eval_config()
    c.eval.sanity.eps_multipliers = (0.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="eps_multipliers"):
        evaluation.evaluate(c, workdirs[0])
    with pytest.raises(ValueError, match="does not exist"):
        evaluation.evaluate(eval_config(), str(tmp_path / "nowhere"))
    # A source model of another dataset (same network shape, so it loads).
    other = str(tmp_path / "other")
    shutil.copytree(workdirs[1], other)
    with open(os.path.join(other, "config.json")) as f:
        cfg = json.load(f)
    cfg["config"]["dataset"] = "mnist"
    with open(os.path.join(other, "config.json"), "w") as f:
        json.dump(cfg, f)
    c = eval_config()
    c.eval.transfer.source_workdir = other
    with pytest.raises(ValueError, match="source_workdir"):
        evaluation.evaluate(c, workdirs[0])


# ---------------------------------------------------------------------------------------------
# The config in force: the run's, with the evaluation's settings and ME's inference options


def test_config_in_force_takes_inference_options_and_refuses_training_keys():
    from menet_jax.config import ConfigError
    from menet_jax.evaluation.suite import config_in_force

    run = tiny_config(**{"me.inference_p": 0.45})
    given = tiny_config(**{"me.method": "softimpute", "me.shrinkage": 0.5, "me.votes": 3})
    given.num_epochs, given.eval.eps = 9, 0.1  # differs, but not set on purpose
    got, changed = config_in_force(given, run, ["me.method", "me.shrinkage", "me.num_masks"])
    assert changed == {"me.method": {"trained": "usvt", "evaluated": "softimpute"},
                       "me.shrinkage": {"trained": None, "evaluated": 0.5}}  # fmt: skip
    assert (got.me.method, got.me.shrinkage, got.me.votes, got.eval.eps) == (
        "softimpute",
        0.5,
        3,
        0.1,
    )
    assert got.num_epochs == run.num_epochs and got.me.channels == run.me.channels
    assert got.me.inference_p == 0.45  # None on the command line keeps the run's
    assert run.me.method == "usvt"  # the run's config is not modified
    # data_dir says where the dataset is read, except for an image folder: its files are the data.
    got, changed = config_in_force(tiny_config(data_dir="/elsewhere"), run, ["data_dir"])
    assert got.data_dir == "/elsewhere" and changed == {}
    folder = tiny_config(dataset="image_folder", data_dir="/a")
    with pytest.raises(ConfigError, match=r"^config\.data_dir='/b' differs from data_dir='/a'"):
        config_in_force(tiny_config(dataset="image_folder", data_dir="/b"), folder, ["data_dir"])
    for key, value in [("seed", 7), ("me.p_start", 0.2), ("model_width", 32), ("adv.steps", 3)]:
        given = tiny_config(**{key: value})
        with pytest.raises(ConfigError, match=rf"^config\.{key}={value!r} differs from {key}="):
            config_in_force(given, run, [key], source="W/config.json")


def _eval_main(workdir, *args):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "menet_jax.main", "--config=configs/mnist_demo.py",
           f"--workdir={workdir}", "--mode=eval", "--config.progress_bar=False",
           f"--config.eval.num_examples={N}", f"--config.eval_batch_size={N}",
           "--config.eval.eval_keys=2", *args]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)


def test_an_inference_option_on_the_command_line_is_what_the_evaluation_runs(workdirs, tmp_path):
    """--config.me.method=none on a USVT run: the reconstruction is the identity, so ME-Net's
    clean rate of every example is the bare network's correctness (computed here apart), the
    ME-only rows are skipped, and results.json / .md record the option."""
    from menet_jax import checkpoint, input_pipeline

    w = str(tmp_path / "w")
    # A copy without earlier results: the module's workdir keeps its own, and what is read below
    # can only come from this evaluation.
    shutil.copytree(workdirs[0], w, ignore=shutil.ignore_patterns("results.*", "eval_partial"))
    r = _eval_main(w, "--config.me.method=none", "--config.me.num_masks=2",  # = the run's
                   "--config.eval.attacks=clean,eot")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(os.path.join(w, "results.json")))
    assert res["inference_overrides"] == {"me.method": {"trained": "usvt", "evaluated": "none"}}
    assert res["me"]["method"] == "none" and "ME-only" in res["skipped"]["rows"]["eot"]
    clf = checkpoint.load(w)
    assert clf.config.me.method == "usvt"  # config.json is the trained run's, unchanged
    images, labels = input_pipeline.load_split("mnist_5k", "test")
    logits = clf.network(input_pipeline.to_float(images[:N]))
    network_correct = np.asarray(np.argmax(logits, -1) == labels[:N], float)
    np.testing.assert_array_equal(np.load(os.path.join(w, "results.npz"))["clean"], network_correct)
    md = open(os.path.join(w, "results.md")).read()
    assert "Evaluated with ME options other than the run was trained with: me.method='none' " \
        "(trained 'usvt')." in md  # fmt: skip


@pytest.mark.parametrize(("key", "value", "trained"), [("seed", 7, 0), ("me.p_start", 0.2, 0.4)])
def test_a_training_key_on_the_command_line_of_an_evaluation_is_refused(
    workdirs, tmp_path, key, value, trained
):
    w = str(tmp_path / "w")
    shutil.copytree(workdirs[0], w, ignore=shutil.ignore_patterns("results.*", "eval_partial"))
    r = _eval_main(w, f"--config.{key}={value}")
    assert (r.returncode, r.stdout) == (1, "") and r.stderr.count("\n") == 1, r.stderr[-3000:]
    assert r.stderr.startswith(
        f"error: config.{key}={value!r} differs from {key}={trained!r} in {w}/config.json, the "
        "run being evaluated, and cannot apply to a trained network: drop the override"
    )
    assert not os.path.exists(os.path.join(w, "results.json"))


# ---------------------------------------------------------------------------------------------
# Statistics against hand-made references


def test_majority_over_draws():
    correct = np.array(
        [
            [1, 1, 0, 0, 1],
            [1, 0, 1, 0, 0],
            [1, 0, 0, 0, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(stats.majority(correct), [True, False, False, False, True])
    # R even: a tie is not a majority.
    np.testing.assert_array_equal(stats.majority(correct[:2]), [True, False, False, False, False])
    with pytest.raises(ValueError):
        stats.majority(np.ones(3, bool))


def test_wilson_interval_closed_form():
    lo, hi = stats.wilson(5, 10)
    # Wilson (1927) for 5/10 at z = 1.96: 0.5 -/+ 1.96 sqrt(0.025 + 0.00960) / 1.38416.
    half = 1.96 * math.sqrt(0.25 / 10 + 1.96**2 / 400) / (1 + 1.96**2 / 10)
    assert lo == pytest.approx(0.5 - half) and hi == pytest.approx(0.5 + half)
    assert lo == pytest.approx(0.2366, abs=1e-4)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(0, 10)[1] == pytest.approx(0.2775, 1e-3)


def test_paired_comparison_noise_passes_and_real_gap_warns():
    rng = np.random.default_rng(0)
    truth = rng.random(1000) < 0.6
    # Mask noise: each row flips 5% of the examples at random; the rates are equal.
    a = truth ^ (rng.random(1000) < 0.05)
    b = truth ^ (rng.random(1000) < 0.05)
    assert stats.not_greater(a, b) and stats.not_greater(b, a) and stats.same_rate(a, b)
    # A clearly stronger attack b: 20% of a's correct examples fall.
    weaker = truth & (rng.random(1000) < 0.8)
    assert not stats.not_greater(truth, weaker) and not stats.same_rate(truth, weaker)
    assert stats.not_greater(weaker, truth)
    # The paired bound is the McNemar one: var of the differences.
    d = truth.astype(float) - weaker.astype(float)
    diff, half = stats.paired_difference(truth, weaker)
    assert diff == pytest.approx(d.mean()) and half == pytest.approx(
        1.96 * d.std() / math.sqrt(1000)
    )


def test_headline_picks_on_selection_and_measures_on_fresh_draws():
    # Two rows on 3 examples (one restart each), R = 2 selection and 2 measurement draws.
    sel = {"a": np.array([[1, 0, 1], [1, 0, 1]], bool), "b": np.array([[0, 1, 1], [0, 1, 1]], bool)}
    meas = {
        "a": np.array([[1, 1, 0], [1, 0, 0]], bool),
        "b": np.array([[1, 0, 1], [0, 0, 1]], bool),
    }
    rows = {k: {"selection": [sel[k]], "measurement": [meas[k]]} for k in sel}
    h = protocol.headline(rows)
    # Example 0: b selected (0 < 1), measured 0.5; example 1: a selected, measured 0.5;
    # example 2: tie, and both rows are equally strong overall: the first (a), measured 0.0.
    np.testing.assert_allclose(h["values"], [0.5, 0.5, 0.0])
    assert h["decided_by"] == ["b", "a", "a"] and h["n"] == 3 and h["accuracy"] == 0.3333
    # A row on a shorter prefix restricts the headline to the examples every row covered.
    rows["c"] = {"selection": [np.ones((2, 2), bool)], "measurement": [np.ones((2, 2), bool)]}
    assert protocol.headline(rows)["n"] == 2


def test_ties_go_to_the_row_strongest_on_the_selection_draws():
    # On its selection draws row "b" fools examples 0 and 1, row "a" only example 0. Examples 0
    # (both fooled) and 2 (neither) are ties: they go to b, the stronger row overall, although
    # "a" comes first.
    sel = {"a": np.array([[0, 1, 1]], bool), "b": np.array([[0, 0, 1]], bool)}
    meas = {"a": np.array([[1, 1, 0]], bool), "b": np.array([[0, 0, 1]], bool)}
    rows = {k: {"selection": [sel[k]], "measurement": [meas[k]]} for k in sel}
    h = protocol.headline(rows)
    assert h["decided_by"] == ["b", "b", "b"]
    np.testing.assert_allclose(h["values"], [0.0, 0.0, 1.0])


def test_headline_estimator_is_unbiased_on_rows_of_equal_strength():
    """Each example has the same true single-mask accuracy q_i under all K rows; the minimum of
    the per-row estimates is biased low, selecting on independent draws is not."""
    gen = np.random.default_rng(0)
    n, k, r = 4000, 6, 5
    q = gen.uniform(0.2, 0.9, n)

    def draws():
        return [gen.random((r, n)) < q for _ in range(k)]

    sel, meas = draws(), draws()
    rows = {f"row{j}": {"selection": [sel[j]], "measurement": [meas[j]]} for j in range(k)}
    estimate = protocol.headline(rows)["accuracy"]
    naive = np.min(np.stack([m.mean(0) for m in meas]), axis=0).mean()
    se = np.sqrt(np.mean(q * (1 - q) / r) / n)
    assert abs(estimate - q.mean()) < 4 * se
    assert naive < q.mean() - 10 * se  # the minimum over the same draws is far too low


def test_row_figures_take_the_worst_restart_per_example():
    sel = [np.array([[1, 1], [1, 1]], bool), np.array([[0, 1], [0, 1]], bool)]
    meas = [np.array([[1, 0], [1, 0]], bool), np.array([[1, 1], [1, 1]], bool)]
    f = protocol.row_figures(sel, meas)
    # Example 0: restart 1 is worse on selection -> measured 1.0; example 1: a tie, which goes
    # to restart 1, the stronger one over all examples -> measured 1.0.
    np.testing.assert_allclose(f["values"], [1.0, 1.0])
    assert "vote_accuracy" not in f  # a vote of one restart's draws only


def test_checks_flag_a_broken_attack():
    # PGD clearly weaker than FGSM and accuracy rising with eps must WARN.
    n = 200
    fgsm = np.zeros(n, bool)
    pgd = np.ones(n, bool)
    rows = {"clean": np.ones(n, bool), "fgsm": fgsm, "pgd_40": pgd, "s0": np.ones(n, bool)}
    rows["s1"], rows["s2"] = fgsm, pgd
    sweep = [(0, "s0"), (1, "s1"), (2, "s2")]
    roles = {Role.REFERENCE: "pgd_40", Role.FGSM: "fgsm", Role.SWEEP: sweep}
    found, skipped = sanity.compute_checks(
        rows, roles=roles, headline=None, num_classes=10,
        runtime={"zero_gradient": 0.5, "probability_logits": 0.0},
        randomness={"pred_varies": 0.0, "logits_vary": 0.0}, randomized=True,
    )  # fmt: skip
    assert found["pgd_at_least_fgsm"]["status"] == "WARN"
    assert found["monotone_in_eps"]["status"] == "WARN"
    assert found["large_eps_near_chance"]["status"] == "WARN"
    assert found["zero_gradient"]["status"] == "WARN"
    assert found["randomness"]["status"] == "WARN"  # an ME-Net whose draws never differ
    assert found["eps0_unchanged"]["status"] == "PASS"
    assert "blackbox_weaker_than_whitebox" in skipped and "eot_at_least_bpda" in skipped


def _checks_on(logits_fn, x, y, *, eps=0.1):
    """The attack rows the checks read, run with real attacks on one model (no ME)."""
    import jax
    import jax.numpy as jnp

    from menet_jax import attacks

    def correct(x_adv):
        return np.asarray(jnp.argmax(logits_fn(x_adv, None), -1) == y)

    def pgd(e):
        kw = {"eps": e, "step_size": e / 10, "steps": 40, "random_start": False}
        return correct(attacks.pgd(logits_fn, x, y, jax.random.key(0), **kw))

    fgsm = attacks.fgsm(logits_fn, x, y, jax.random.key(1), eps=eps)
    rows = {"clean": correct(x), "fgsm": correct(fgsm)}
    sweep = []
    for m in (0.0, 1.0, 4.0):
        rows[f"sweep_eps_x{m:g}"] = pgd(eps * m)
        sweep.append((m, f"sweep_eps_x{m:g}"))
    rows["pgd_40"] = rows["no_me_pgd"] = rows["fixed_mask_pgd"] = rows["sweep_eps_x1"]
    grad = jax.grad(lambda z: jnp.sum(attacks.cross_entropy(logits_fn(z, None), y)))(x)
    zero = float(np.mean(np.all(np.asarray(grad).reshape(len(y), -1) == 0, axis=1)))
    roles = {Role.REFERENCE: "pgd_40", Role.FGSM: "fgsm", Role.SWEEP: sweep,
             Role.NO_ME: "no_me_pgd", Role.FIXED_MASK: "fixed_mask_pgd"}  # fmt: skip
    found, _ = sanity.compute_checks(
        {k: v.astype(np.float64) for k, v in rows.items()}, roles=roles, headline=None,
        num_classes=10, runtime={"zero_gradient": zero, "probability_logits": 0.0},
        randomness={"pred_varies": 0.9, "logits_vary": 0.9}, randomized=True,
    )  # fmt: skip
    return found


def test_checks_fail_on_a_model_that_masks_its_gradients():
    """A model whose logits carry no gradient (stop_gradient on the input) looks robust to
    gradient attacks; the checks must say so. The same model with its gradient passes them."""
    import jax
    import jax.numpy as jnp

    w = jax.random.normal(jax.random.key(1), (64, 10))
    x = jax.random.uniform(jax.random.key(2), (200, 8, 8, 1))

    def honest(z, key):
        return z.reshape(z.shape[0], -1) @ w

    def masked(z, key):
        return jax.lax.stop_gradient(z).reshape(z.shape[0], -1) @ w

    y = jnp.argmax(honest(x, None), -1)
    bad, good = _checks_on(masked, x, y), _checks_on(honest, x, y)
    for name in (
        "zero_gradient", "large_eps_near_chance", "no_me_attack_succeeds",
        "fixed_mask_attack_succeeds",
    ):  # fmt: skip
        assert bad[name]["status"] == "WARN", (name, bad[name])
        assert good[name]["status"] == "PASS", (name, good[name])


def test_exact_gradient_rows(workdirs):
    c = eval_config()
    c.eval.attacks, c.eval.gradient = "pgd", "exact"
    r = evaluation.evaluate(c, workdirs[0])
    assert r["attacks"]["pgd_3"]["threat"] == "white-box EXACT"
    assert 0 <= r["attacks"]["pgd_3"]["accuracy"] <= r["clean"]["accuracy"] + 0.2
    c.eval.gradient = "straight"
    with pytest.raises(ValueError, match="config.eval.gradient"):
        evaluation.evaluate(c, workdirs[0])


def test_a_killed_evaluation_resumes_at_the_first_unfinished_row(me_report, workdirs, monkeypatch):
    from menet_jax.evaluation import suite

    c = eval_config()
    c.eval.attacks = "fgsm,pgd,vote"
    c.eval.transfer.source_workdir = workdirs[1]  # as me_report: the same settings, same rows
    ran, real = [], suite.run_row

    def killed_after_three(row, *args, **kwargs):
        if len(ran) == 3:
            raise KeyboardInterrupt  # as if the job were killed during the fourth row
        ran.append(row.name)
        return real(row, *args, **kwargs)

    monkeypatch.setattr(suite, "run_row", killed_after_three)
    c.eval.n_eval = ()  # rows finished without the N-evaluation's draws get them on resuming
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(c, workdirs[0])
    c.eval.n_eval = (1, 5, 20)
    assert ran == ["clean", "fgsm", "pgd_3"]
    ran.clear()

    def counting(row, *args, **kwargs):
        ran.append(row.name)
        return real(row, *args, **kwargs)

    monkeypatch.setattr(suite, "run_row", counting)
    again = evaluation.evaluate(c, workdirs[0])
    # Only the unfinished rows ran; vote_pgd_3 reused pgd_3's saved images.
    assert again["resumed_rows"] == ["clean", "fgsm", "pgd_3"]
    assert ran == ["pgd_long_5", "vote_clean", "vote_pgd_3", "vote_apgd_ce"]
    for name, a in again["attacks"].items():  # the uninterrupted evaluation's figures
        assert a["accuracy"] == me_report["attacks"][name]["accuracy"], name
        assert a.get("all_draws") == me_report["attacks"][name].get("all_draws"), name
    assert again["clean"]["all_draws"] == me_report["clean"]["all_draws"]
    assert not os.path.exists(os.path.join(workdirs[0], "eval_partial"))


def test_finished_rows_of_other_settings_are_not_reused(tmp_path):
    from menet_jax.evaluation import suite

    row = {"correct": np.ones((1, 4, 3), bool), "extra": {"unbounded_success_rate": 0.5}}
    suite._Store(str(tmp_path), {"eps": 0.3}).save("fgsm", row, 1.5)
    back, seconds = suite._Store(str(tmp_path), {"eps": 0.3}).load("fgsm")
    np.testing.assert_array_equal(back["correct"], row["correct"])
    assert back["extra"] == row["extra"] and seconds == 1.5
    assert suite._Store(str(tmp_path), {"eps": 0.2}).load("fgsm") is None


def test_top5_headline_and_vote_top5_against_hand_made_draws():
    import types

    import jax.numpy as jnp

    from menet_jax.evaluation import report
    from menet_jax.evaluation.rows import Plan, Row
    from menet_jax.evaluation.target import score

    # A class with no vote is never in the vote's top 5, whatever its index.
    fractions = jnp.array([[[0.6, 0.4] + [0.0] * 10]])  # 1 draw, 1 example, 12 classes
    assert not bool(score(fractions, jnp.array([2]), top5=True, votes=True)["top5"][0, 0])
    assert bool(score(fractions, jnp.array([2]), top5=True, votes=False)["top5"][0, 0])
    assert bool(score(fractions, jnp.array([1]), top5=True, votes=True)["top5"][0, 0])

    # Two counted rows on 4 examples, R = 2 (2 measure + 2 select draws), one restart each.
    n, R = 4, 2
    ones = np.ones((1, 2 * R, n), bool)
    attack_top5 = ones.copy()
    attack_top5[:, :, 2:] = False  # top-5 correct on examples 0-1 only, on every draw
    attack_correct = np.zeros((1, 2 * R, n), bool)

    def result(correct, top5):
        from menet_jax.evaluation import protocol

        fig = protocol.row_figures(list(correct[:, R:]), list(correct[:, :R]))
        return {"correct": correct, "top5": top5, "figures": fig,
                "pred_varies": np.zeros(n, bool), "logits_vary": np.ones(n, bool)}  # fmt: skip

    target = types.SimpleNamespace(randomized=True)
    plan = Plan(ev=None, target=target, source=None, n_all=n)
    plan.rows = [Row("clean", "clean", "none", n, {}, counted=True),
                 Row("pgd_3", "pgd", "white-box", n, {"eps": 0.3}, counted=True)]  # fmt: skip
    results = {"clean": result(ones, ones), "pgd_3": result(attack_correct, attack_top5)}
    out = report.build(plan, results, {"clean": 0.0, "pgd_3": 0.0}, runtime=None, top5=True,
                       num_classes=200, R=R)  # fmt: skip
    assert out["headline"]["accuracy"] == 0.0
    assert out["headline"]["top5"]["accuracy"] == 0.5  # worst case per example: 1, 1, 0, 0
    np.testing.assert_array_equal(out["_arrays"]["headline_top5"], [1, 1, 0, 0])
    assert out["attacks"]["pgd_3"]["top5"] == 0.5 and out["clean"]["top5"] == 1.0


def test_runtime_checks_and_blackbox_examples_listed():
    n = 200
    head = np.full(n, 0.4)
    bb = head.copy()
    bb[[3, 17]] = 0.0  # the black-box row did better than every counted row on two examples
    strong = np.zeros(n)  # a black-box row far stronger than the white-box worst case
    base = {"clean": np.ones(n), "spsa": bb, "boundary": strong}
    found, _ = sanity.compute_checks(
        base, roles={Role.BLACKBOX: ["spsa", "boundary"]}, headline=head, num_classes=10,
        runtime={"zero_gradient": 0.0, "probability_logits": 0.25}, randomness=None,
        randomized=True,
    )  # fmt: skip
    c = found["blackbox_weaker_than_whitebox"]
    assert c["status"] == "WARN" and "boundary" in c["detail"]
    assert c["value"]["spsa"]["examples_lower"] == [3, 17]
    assert len(c["value"]["boundary"]["examples_lower"]) == n
    assert found["logits_not_probabilities"]["status"] == "WARN"
    assert found["zero_gradient"]["status"] == "PASS"
    found, _ = sanity.compute_checks(
        {"clean": np.ones(n), "spsa": bb}, roles={Role.BLACKBOX: ["spsa"]}, headline=head,
        num_classes=10, runtime={"zero_gradient": 0.0, "probability_logits": 0.0},
        randomness=None, randomized=True,
    )  # fmt: skip
    assert found["blackbox_weaker_than_whitebox"]["status"] == "PASS"  # 2 of 200: noise
    assert found["logits_not_probabilities"]["status"] == "PASS"
    strong_graybox = {"pgd_40": np.full(n, 0.7), "graybox": np.full(n, 0.5)}
    found, skipped = sanity.compute_checks(  # a role's value names it too
        strong_graybox, roles={"reference": "pgd_40", "graybox": "graybox"}, headline=None,
        num_classes=10, runtime=None, randomness=None, randomized=True,
    )  # fmt: skip
    assert found["whitebox_at_least_graybox"]["status"] == "WARN"
    with pytest.raises(ValueError, match="'grey_box' is not a valid Role"):
        sanity.compute_checks(
            strong_graybox, roles={"grey_box": "graybox"}, headline=None, num_classes=10,
            runtime=None, randomness=None, randomized=True,
        )  # fmt: skip
    assert "zero_gradient" in skipped and "logits_not_probabilities" in skipped
