"""The study framework: a tiny study end to end, resumed after a kill without re-training or
re-evaluating a finished point, its table against the per-point results.json files read here,
the model cache, the declared studies, and the command line."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

from menet_jax import evaluation, train
from menet_jax.config import ConfigError, load_config
from menet_jax.study import (
    STUDIES,
    Column,
    Lines,
    Point,
    Quoted,
    Study,
    core,
    model_hash,
    register,
    run_study,
)
from tests.test_train import ROOT, tiny_config

N = 16
TINY = Study(
    name="tiny_test",
    title="a tiny study",
    paper="none.",
    ours="two points of one model.",
    # Both points train the same model: they differ in evaluation keys only (me.votes too).
    points=[
        Point("a", {"eval.eps": 0.3}, {"eps": 0.3, "steps": 3}),
        Point("b", {"eval.eps": 0.1, "me.votes": 3}, {"eps": 0.1, "steps": 3}),
    ],
    columns=(Column("PGD", "pgd_{steps}"), Column("EOT", "bpda_eot")),
    plot=Lines("eps", ("PGD", "headline")),
    quoted=(Quoted("Elsewhere", "a paper's Table 1", {"eps": "0.3", "PGD": "12.3%"}),),
)


def tiny_base():
    c = tiny_config()
    c.eval_batch_size = N
    ev = c.eval
    ev.num_examples, ev.eval_keys, ev.pgd.steps, ev.pgd.long_examples = N, 3, (3,), 0
    ev.attacks = "pgd"
    return c


@pytest.fixture(autouse=True, scope="module")
def tiny_registered():
    register(TINY, replace=True)
    yield
    STUDIES.pop(TINY.name, None)


class Killed(RuntimeError):
    pass


@pytest.fixture()
def counted(monkeypatch):
    """Counts train / evaluate calls; `kill` names a point whose evaluation raises."""
    calls = {"train": [], "evaluate": [], "kill": None}
    real_train, real_eval = train.train_and_evaluate, evaluation.evaluate

    def fake_train(config, workdir):
        calls["train"].append(workdir)
        return real_train(config, workdir)

    def fake_eval(config, workdir):
        name = os.path.basename(workdir)
        calls["evaluate"].append(name)
        if name == calls["kill"]:
            raise Killed(f"killed while evaluating {name}")
        return real_eval(config, workdir)

    monkeypatch.setattr(train, "train_and_evaluate", fake_train)
    monkeypatch.setattr(evaluation, "evaluate", fake_eval)
    return calls


def test_tiny_study_end_to_end_resumes_and_tabulates(tmp_path, counted):
    d = str(tmp_path)
    counted["kill"] = "b"
    with pytest.raises(Killed):
        run_study(TINY.name, tiny_base(), d)
    assert len(counted["train"]) == 1 and counted["evaluate"] == ["a", "b"]
    assert os.path.isfile(f"{d}/points/a/results.json")
    assert not os.path.exists(f"{d}/points/b/results.json")
    assert not os.path.exists(f"{d}/tiny_test.md")

    counted["kill"] = None  # run again: nothing trains, only b is evaluated
    out = run_study(TINY.name, tiny_base(), d, command="the test")
    assert len(counted["train"]) == 1 and counted["evaluate"] == ["a", "b", "b"]
    assert out["models_trained"] == [] and out["points_evaluated"] == ["b"]
    out = run_study(TINY.name, tiny_base(), d)  # finished: nothing runs
    assert len(counted["train"]) == 1 and len(counted["evaluate"]) == 3
    assert out["points_evaluated"] == []

    # One model, shared by both points through a symlink (no copied checkpoints).
    (model,) = os.listdir(f"{d}/models")
    assert model == model_hash(tiny_base())
    for p in ("a", "b"):
        link = f"{d}/points/{p}/checkpoints"
        assert os.path.islink(link)
        assert os.path.realpath(link) == os.path.realpath(f"{d}/models/{model}/checkpoints")

    # The table equals the per-point results.json files, read here independently.
    with open(f"{d}/tiny_test.json") as f:
        table = json.load(f)
    md = open(f"{d}/tiny_test.md").read()
    assert [r["name"] for r in table["points"]] == ["a", "b"]
    evaluated = 0.0
    for rec in table["points"]:
        with open(f"{d}/points/{rec['name']}/results.json") as f:
            res = json.load(f)
        assert rec["results"] == f"points/{rec['name']}/results.json"
        expect = {
            "clean": res["clean"],
            "headline": res["headline"],
            "PGD": res["attacks"]["pgd_3"],
        }
        for label, ref in expect.items():
            got = rec["cells"][label]
            assert got["accuracy"] == ref["accuracy"], (rec["name"], label)
            assert got["interval"] == ref["interval"] and got["n"] == ref["n"] == N
            lo, hi = ref["interval"]
            assert f"{ref['accuracy']:.1%} ({lo:.1%}-{hi:.1%}, n {N})" in md
        assert rec["cells"]["EOT"]["missing"]
        evaluated += res["budgets"]["total_seconds"]
        assert res["attacks"]["pgd_3"]["params"]["eps"] == rec["values"]["eps"]
    summary = json.load(open(f"{d}/models/{model}/summary.json"))
    assert table["recorded"] == {
        "models": 1,
        "training_s": round(summary["total_time_s"], 1),
        "evaluation_s": round(evaluated, 1),
    }
    # me.votes reached b's evaluation; the model was trained with the base's votes.
    assert json.load(open(f"{d}/points/b/results.json"))["me"]["votes"] == 3
    assert "Command: `run_study('tiny_test'" in md
    # The quoted row: under the points, marked, its missing columns "not reported", not run.
    nr = "not reported"
    assert f"| Elsewhere (quoted) | 0.3 |  | {nr} | {nr} | 12.3% | {nr} |" in md
    assert "Rows marked (quoted) are the paper's figures" in md and "a paper's Table 1" in md
    assert table["quoted"] == [{"name": "Elsewhere", "source": "a paper's Table 1",
                                "cells": {"eps": "0.3", "PGD": "12.3%"}}]  # fmt: skip
    png = matplotlib.image.imread(f"{d}/tiny_test.png")
    assert png.ndim == 3 and png.shape[0] > 100

    # A picture-only study on the same base reuses the cached model.
    over = {"eval.eot.steps": 2, "eval.eot.samples": 1}
    out = run_study("noise", tiny_base(), d, overrides=over)
    assert len(counted["train"]) == 1 and out["models_trained"] == []
    images = out["data"]["images"]
    assert len(images) == 4
    assert all(im["linf_noise"] <= tiny_base().eval.eps + 1e-5 for im in images)
    assert matplotlib.image.imread(f"{d}/noise.png").ndim == 3
    assert "| test image | label |" in open(f"{d}/noise.md").read()


def test_changed_evaluation_settings_make_a_point_unfinished(tmp_path):
    d = str(tmp_path)
    _, entries, _ = core.plan(TINY, tiny_base(), d)
    e = entries[0]
    os.makedirs(f"{d}/models/{e.model}/checkpoints")
    with open(f"{d}/models/{e.model}/config.json", "w") as f:
        f.write("{}")
    core.prepare_point(d, e)
    with open(f"{d}/points/a/results.json", "w") as f:
        f.write("{}")
    assert core.point_finished(d, e)
    _, changed, _ = core.plan(TINY, tiny_base(), d, {"eval.eval_keys": 2})
    assert changed[0].model == e.model and not core.point_finished(d, changed[0])
    core.prepare_point(d, changed[0])  # removes the stale results
    assert not os.path.exists(f"{d}/points/a/results.json")


def test_model_cache_key():
    base = tiny_base()
    h = model_hash(base)
    same = copy.deepcopy(base)
    same.eval.eps, same.me.votes, same.progress_bar, same.log_every_steps = 0.1, 3, True, 1
    same.me.inference_p = 0.3
    assert model_hash(same) == h
    other = copy.deepcopy(base)
    other.me.p_start = 0.2
    assert model_hash(other) != h
    # A vanilla model does not depend on the ME keys, nor on adv keys when not adversarial.
    v1, v2 = core.vanilla_config(base), core.vanilla_config(other)
    v2.adv.eps = 0.1
    assert model_hash(v1) == model_hash(v2) != h
    # Config schema 4's keys at their defaults leave the hashes of cached models as they were.
    demo = load_config(os.path.join(ROOT, "configs/mnist_demo.py"))
    assert model_hash(demo) == "f3d5279ce15a89b9"
    adv = load_config(os.path.join(ROOT, "configs/mnist_demo.py:adv"))
    assert model_hash(adv) == "18ab682a39a2cad2"
    adv.adv.attack_bn = "train"
    assert model_hash(adv) != "18ab682a39a2cad2"
    demo.model_mean, demo.model_std = (0.5,), (0.25,)
    assert model_hash(demo) != "f3d5279ce15a89b9"


def test_plan_transfer_source_model_of_and_errors(tmp_path):
    d = str(tmp_path)
    study = Study(
        "plan_test", "t", "p", "o",
        points=[Point("x", {"me.p_start": 0.2}, transfer=True),
                Point("y", {"eval.eps": 0.1}, model_of="x")],
    )  # fmt: skip
    base, entries, models = core.plan(study, tiny_base(), d)
    x, y = entries
    assert y.model == x.model and len(models) == 2
    assert x.source == model_hash(core.vanilla_config(base))
    assert x.config.eval.transfer.source_workdir == core.model_dir(d, x.source)
    assert models[x.source].me.method == "none"
    assert y.config.me.p_start == 0.2 and y.config.eval.eps == 0.1
    # A source the user gives wins; no vanilla model is planned.
    _, entries, models = core.plan(study, tiny_base(), d, {"eval.transfer.source_workdir": d})
    assert entries[0].source is None and len(models) == 1
    bad = Study("bad", "t", "p", "o", points=[Point("x", {"me.nope": 1})])
    with pytest.raises(ConfigError, match="config.me.nope"):
        core.plan(bad, tiny_base(), d)
    dup = Study("dup", "t", "p", "o", points=[Point("x"), Point("x")])
    with pytest.raises(ConfigError, match="unique"):
        core.plan(dup, tiny_base(), d)
    with pytest.raises(ConfigError, match="unknown study"):
        run_study("no_such_study", tiny_base(), d)


def test_declared_studies_plan_on_the_demo_config(tmp_path):
    from menet_jax.config import validate
    from menet_jax.evaluation.settings import validate_eval

    names = ["eps", "p_tradeoff", "me_methods", "restarts", "vote", "num_masks", "noise",
             "defences"]  # fmt: skip
    assert all(n in STUDIES for n in names)
    spec = os.path.join(ROOT, "configs/mnist_demo.py")
    demo = load_config(spec)
    default_model = model_hash(demo)
    for name in names:
        _, entries, models = core.plan(STUDIES[name], demo, str(tmp_path), config_spec=spec)
        for e in entries:
            validate(e.config)
            validate_eval(e.config.eval)
            if STUDIES[name].pictures is None:
                assert 200 <= e.config.eval.num_examples <= 300
                assert e.config.eval.pgd.long_examples == 0
        assert default_model in models, name  # the demo model is shared by every study
    _, entries, _ = core.plan(STUDIES["restarts"], demo, str(tmp_path))
    grid = {(e.config.eval.restarts, e.config.eval.step_size) for e in entries[:-1]}
    assert grid == {(r, s) for r in (1, 5, 10) for s in (0.01, 0.02, 0.04)}


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "menet_jax.study", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_command_line_list_and_unknown_study():
    r = _cli("--list")
    assert r.returncode == 0
    listed = [line.split()[0] for line in r.stdout.splitlines()]
    for name in ("eps", "p_tradeoff", "me_methods", "restarts", "vote", "num_masks", "noise",
                 "defences"):  # fmt: skip
        assert name in listed
    r = _cli("nope", "--config=configs/mnist_demo.py", "--workdir=/tmp/unused")
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown study 'nope'"), r.stderr


def test_defences_plans_five_models_trained_alike(tmp_path):
    spec = os.path.join(ROOT, "configs/mnist_demo.py")
    demo = load_config(spec)
    _, entries, models = core.plan(STUDIES["defences"], demo, str(tmp_path), config_spec=spec)
    by = {e.point.name: e for e in entries}
    assert list(by) == ["vanilla", "madry", "tvm", "usvt", "softimpute"]
    assert len(models) == 5 and len({e.model for e in entries}) == 5
    for e in entries:  # the paper's rows, the adaptive row, the demo's budgets; no transfer
        ev = e.config.eval
        assert ev.pgd.steps == (7, 20, 40, 100) and ev.num_examples == 300
        assert ev.step_size == pytest.approx(demo.eval.eps / 4) and ev.eps == demo.eval.eps
        assert set(ev.attacks.split(",")) == {"pgd", "eot"} and e.source is None
        assert ev.eot.steps == 40 and ev.eot.samples == 4 and ev.pgd.long_examples == 0
    c = {n: e.config for n, e in by.items()}
    assert c["vanilla"].me.method == "none" and not c["vanilla"].adv.enabled
    # madry is the demo's `madry` variant: adversarial training alone, the same model and hash.
    madry = load_config(spec + ":madry")
    assert c["madry"].me.method == "none" and c["madry"].adv.enabled
    for key in ("num_epochs", "lr_boundaries_epochs", "learning_rate", "batch_size"):
        assert c["madry"][key] == madry[key], key
    assert c["madry"].adv.to_dict() == madry.adv.to_dict()
    assert by["madry"].model == model_hash(madry)
    assert c["tvm"].me.method == "tvm" and c["tvm"].me.p_start == c["tvm"].me.p_end == 0.5
    assert not c["tvm"].adv.enabled
    # USVT is the demo model itself; Soft-Impute and TVM differ from it only in the method (and
    # TVM's p).
    assert by["usvt"].model == model_hash(demo)
    for name, method in (("softimpute", "softimpute"), ("tvm", "tvm")):
        other = copy.deepcopy(demo)
        other.me.method = method
        if name == "tvm":
            other.me.p_start = other.me.p_end = 0.5
        assert by[name].model == model_hash(other), name
    # Without the config file the madry point cannot be planned: one sentence says why.
    with pytest.raises(ConfigError, match="'madry' variant, so the study needs the config file"):
        core.plan(STUDIES["defences"], demo, str(tmp_path))


def test_variant_overrides_are_the_variants_training_keys():
    cpu = os.path.join(ROOT, "configs/cifar10.py:cpu")
    over = core.variant_overrides(cpu, "madry")
    assert over["me.method"] == "none" and over["adv.enabled"] is True
    assert not any(k.startswith("eval.") for k in over)
    assert "model_width" not in over  # the cpu variant's keys stay as the base has them
    base, varied = load_config(cpu), load_config(cpu + ",madry")
    core.apply_overrides(base, over, where="test")
    assert model_hash(base) == model_hash(varied)


TINY_FILE = """
import sys
sys.path.insert(0, {root!r})
from tests.test_study import tiny_base


def get_config(arg=None):
    c = tiny_base()
    c.me.tv_iterations = 5
    if arg == "madry":  # a variant that trains differently: adversarially, without ME
        c.me.method, c.adv.enabled, c.adv.steps, c.num_train_steps = "none", True, 2, 4
    return c
"""


@pytest.mark.slow  # five tiny models: about a minute on 2 cores
def test_defences_end_to_end_on_a_tiny_config(tmp_path, counted):
    spec = str(tmp_path / "tiny_config.py")
    with open(spec, "w") as f:
        f.write(TINY_FILE.format(root=ROOT))
    over = {"eval.pgd.steps": (7,), "eval.attacks": "pgd", "eval.num_examples": N}
    d = str(tmp_path / "study")
    out = run_study("defences", load_config(spec), d, overrides=over, config_spec=spec)
    assert len(counted["train"]) == 5 and len(out["points"]) == 5
    for name in ("defences.md", "defences.json", "defences.png"):
        assert os.path.isfile(os.path.join(d, name))
    madry = json.load(open(f"{d}/points/madry/config.json"))["config"]
    assert madry["adv"]["enabled"] and madry["me"]["method"] == "none"
    assert madry["num_train_steps"] == 4  # the file's variant, not the base's 6 steps
    tvm = json.load(open(f"{d}/points/tvm/config.json"))["config"]["me"]
    assert tvm["method"] == "tvm" and tvm["p_start"] == tvm["p_end"] == 0.5
    md = open(f"{d}/defences.md").read()
    assert "| Thermometer (quoted) | Thermometer | Prep. |" in md
    assert "| PixelDefend (quoted) | PixelDefend | Prep. |" in md
    assert "9.0%" in md and "from Athalye et al. (2018)" in md
    assert "Models: pure ME-Net (but madry: adversarially trained)" in md
    for rec in out["points"]:
        assert "missing" not in rec["cells"]["PGD-7"] and "missing" not in rec["cells"]["headline"]
        assert rec["cells"]["PGD-20"]["missing"]  # not among this run's rows


def test_bars_legend_names_a_column_the_first_point_lacks():
    # The vanilla point has no BPDA+EOT row (a deterministic model): the column is still named.
    from menet_jax.study import Bars, output

    def cell(acc):
        return {"accuracy": acc, "interval": [acc - 0.05, acc + 0.05]}

    records = [
        {"name": "vanilla", "cells": {"clean": cell(0.9), "BPDA+EOT": {"missing": "n/a"}}},
        {"name": "menet", "cells": {"clean": cell(0.9), "BPDA+EOT": cell(0.5)}},
    ]
    plt = output.pyplot()
    fig = output._bars(plt, Bars(("clean", "BPDA+EOT")), records)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert labels == ["clean", "BPDA+EOT"]
