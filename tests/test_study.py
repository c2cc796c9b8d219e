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

    names = ["eps", "p_tradeoff", "me_methods", "restarts", "vote", "num_masks", "noise"]
    assert all(n in STUDIES for n in names)
    demo = load_config(os.path.join(ROOT, "configs/mnist_demo.py"))
    default_model = model_hash(demo)
    for name in names:
        _, entries, models = core.plan(STUDIES[name], demo, str(tmp_path))
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
    for name in ("eps", "p_tradeoff", "me_methods", "restarts", "vote", "num_masks", "noise"):
        assert name in listed
    r = _cli("nope", "--config=configs/mnist_demo.py", "--workdir=/tmp/unused")
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown study 'nope'"), r.stderr
