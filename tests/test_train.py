"""Training end to end on tiny configs: configs, S', resume, checkpoints, errors, main."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from menet_jax import adversarial, checkpoint, defense, me, preprocess, recipe, rng, sprime, train
from menet_jax.config import ConfigError, load_config
from menet_jax.config import validate as validate_config
from menet_jax.evaluation.settings import validate_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = ["cifar10", "mnist", "svhn", "tiny_imagenet", "mnist_demo"]


def tiny_config(**overrides):
    """The demo config cut down to seconds: 256 digits, batch 32, a few steps."""
    c = load_config(os.path.join(ROOT, "configs/mnist_demo.py"))
    c.num_train_examples = 256
    c.num_eval_examples = 64
    c.eval_batch_size = 32
    c.batch_size = 32
    c.num_epochs = 1
    c.num_train_steps = 6
    c.checkpoint_every_steps = 3
    c.log_every_steps = 2
    c.me.num_masks = 2
    c.progress_bar = False
    for key, value in overrides.items():
        target = c
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return c


def params_of(workdir):
    clf = checkpoint.load(workdir)
    return nnx.to_pure_dict(clf.state)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
@pytest.mark.parametrize("variant", ["", ":adv"])
def test_paper_configs_load_and_validate(name, variant):
    c = load_config(os.path.join(ROOT, f"configs/{name}.py{variant}"))
    validate_config(c)
    assert c.weight_decay == 1e-4 and c.momentum == 0.9
    assert c.adv.enabled == (variant == ":adv")


def test_table8_settings():
    table8 = {  # dataset: (model, augment, lr, epochs, boundaries)
        "cifar10": ("resnet18", True, 0.1, 200, (100, 150)),
        "mnist": ("lenet", False, 0.01, 200, (100, 150)),
        "svhn": ("resnet18", True, 0.01, 200, (100, 150)),
        "tiny_imagenet": ("densenet121", True, 0.1, 90, (30, 60)),
    }
    for name, (model, aug, lr, epochs, bounds) in table8.items():
        c = load_config(os.path.join(ROOT, f"configs/{name}.py"))
        got = (c.model, c.augment, c.learning_rate, c.num_epochs, tuple(c.lr_boundaries_epochs))
        assert got == (model, aug, lr, epochs, bounds), name
        assert c.batch_size == 256 and c.me.num_masks == 10


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("dataset", "imagenet", "config.dataset"),
        ("model", "vgg", "config.model"),
        ("me.method", "svd", "config.me.method"),
        ("me.channels", "rgb", "config.me.channels"),
        ("me.p_start", 0.0, "config.me.p_start"),
        ("me.p_end", 1.5, "config.me.p_end"),
        ("me.p_start", 0.9, "must not exceed"),
        ("batch_size", 0, "config.batch_size"),
        ("num_epochs", -1, "config.num_epochs"),
        ("me.num_masks", 0, "config.me.num_masks"),
        ("me.mode", "lazy", "config.me.mode"),
        ("learning_rate", 0.0, "config.learning_rate"),
        ("me.rank_fraction", 1.5, "config.me.rank_fraction"),
    ],
)
def test_bad_config_values_raise_one_clear_error(key, value, fragment):
    c = tiny_config(**{key: value})
    if key == "me.p_start" and value == 0.9:
        c.me.p_end = 0.6
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        validate_config(c)


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown config variant"):
        load_config(os.path.join(ROOT, "configs/cifar10.py:fast"))


def test_learning_rate_decays_at_epoch_boundaries():
    c = tiny_config(num_train_examples=64, batch_size=32, **{"me.num_masks": 2})
    c.lr_boundaries_epochs = (2, 3)  # one epoch = 64 * 2 / 32 = 4 steps
    sched = recipe.learning_rate_schedule(c, 64)
    lr = c.learning_rate
    np.testing.assert_allclose(
        [sched(7), sched(8), sched(11), sched(12)], [lr, lr * 0.1, lr * 0.1, lr * 0.01], rtol=1e-6
    )


def test_sprime_offline_equals_online_reconstruction(tmp_path):
    """Offline S' holds exactly what the online step reconstructs for the same (i, k)."""
    c = tiny_config(num_train_examples=12, **{"me.num_masks": 3, "me.build_batch_size": 5})
    data = train.load_data(c)
    cached = sprime.build(c, data.train_images, str(tmp_path))
    assert cached.shape == (36, 28, 28, 1) and cached.dtype == np.uint8
    e = np.array([0, 4, 17, 35])
    i, k = e // 3, e % 3
    online = preprocess.from_config(c.me).examples(
        c.seed, jnp.asarray(data.train_images[i], jnp.float32) / 255.0, i, k
    )
    online_u8 = np.round(np.asarray(online) * 255.0)
    np.testing.assert_allclose(np.asarray(online) * 255.0, online_u8, atol=1e-3)  # on the grid
    np.testing.assert_array_equal(online_u8, cached[e].astype(np.float32))
    # The masks follow the documented keys and schedule: copy k observes about p_k of the pixels.
    ps = defense.training_ps(c.me)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed), 5), 2)
    mask = me.sample_mask(key, (28, 28, 1), ps[2])
    expected = me.reconstruct(
        jnp.asarray(data.train_images[5:6], jnp.float32) / 255.0, mask[None], method="usvt"
    )
    np.testing.assert_allclose(
        cached[5 * 3 + 2].astype(np.float32), np.round(np.asarray(expected[0]) * 255), atol=1.0
    )
    # A second call reuses the cache instead of rebuilding.
    mtime = os.path.getmtime(next(p for p in tmp_path.glob("sprime/*.npy")))
    sprime.build(c, data.train_images, str(tmp_path))
    assert os.path.getmtime(next(p for p in tmp_path.glob("sprime/*.npy"))) == mtime


def test_train_writes_checkpoints_metrics_and_summary(tmp_path):
    c = tiny_config()
    summary = train.train_and_evaluate(c, str(tmp_path))
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps == [3, 6]
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [x["step"] for x in lines if "train_loss" in x] == [2, 4, 6]
    assert all(np.isfinite(x["train_loss"]) for x in lines if "train_loss" in x)
    on_disk = json.load(open(tmp_path / "summary.json"))
    for key in ("clean_accuracy", "train_time_s", "config", "network_accuracy"):
        assert key in on_disk
    assert 0.0 <= summary["clean_accuracy"] <= 1.0
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_resume_equals_uninterrupted(tmp_path, mode):
    """Stopping after step 3 and restarting ends with the uninterrupted run's parameters."""
    full = tiny_config(**{"me.mode": mode})
    train.train_and_evaluate(full, str(tmp_path / "full"))
    first = tiny_config(num_train_steps=3, **{"me.mode": mode})
    train.train_and_evaluate(first, str(tmp_path / "split"))
    summary = train.train_and_evaluate(full, str(tmp_path / "split"))
    assert summary["resumed_from_step"] == 3
    a, b = params_of(tmp_path / "full"), params_of(tmp_path / "split")
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_vanilla_and_online_me_train_the_same_code_path(tmp_path):
    for method in ("none", "usvt"):
        c = tiny_config(**{"me.method": method, "me.mode": "online"})
        s = train.train_and_evaluate(c, str(tmp_path / method))
        assert ("menet_accuracy" in s) == (method != "none")


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    c = tiny_config(num_train_steps=3)
    train.train_and_evaluate(c, str(tmp_path))
    good = params_of(tmp_path)
    bad = tiny_config(num_train_steps=9, learning_rate=1e30)
    with pytest.raises(train.TrainingDivergedError, match="last good checkpoint"):
        train.train_and_evaluate(bad, str(tmp_path))
    assert checkpoint.load(str(tmp_path)).step == 3
    jax.tree.map(np.testing.assert_array_equal, good, params_of(tmp_path))


def test_load_gives_a_jittable_defended_classifier(tmp_path):
    c = tiny_config()
    train.train_and_evaluate(c, str(tmp_path))
    clf = checkpoint.load(str(tmp_path))
    assert clf.config.model == "lenet" and clf.step == 6
    x = jnp.full((4, 28, 28, 1), 0.5)
    logits = jax.jit(clf.network)(x)
    assert logits.shape == (4, 10)
    d1 = jax.jit(clf.defended)(x, jax.random.key(0))
    d2 = clf.defended(x, jax.random.key(0))
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-5)
    votes = clf.defended(x, jax.random.key(1), votes=5)
    np.testing.assert_allclose(np.asarray(votes).sum(-1), 1.0, rtol=1e-6)
    # BPDA: the gradient of the defended model equals the network's gradient at ME(x).
    key = jax.random.key(2)
    g = jax.grad(lambda z: clf.defended(z, key, bpda=True)[:, 0].sum())(x)
    rec = clf.preprocess(x, key)
    g_ref = jax.grad(lambda z: clf.network(z)[:, 0].sum())(rec)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(str(tmp_path / "nothing"))
    c = tiny_config(num_train_steps=3)
    train.train_and_evaluate(c, str(tmp_path))
    for root, _, files in os.walk(tmp_path / "checkpoints" / "3"):
        for f in files:
            path = os.path.join(root, f)
            if os.path.getsize(path) > 0:
                with open(path, "r+b") as fh:
                    fh.write(b"\x00garbage\xff" * 8)
    with pytest.raises(checkpoint.CheckpointError, match="could not be read"):
        checkpoint.load(str(tmp_path))


def test_workdir_of_another_model_is_refused(tmp_path):
    train.train_and_evaluate(tiny_config(num_train_steps=1), str(tmp_path))
    with pytest.raises(ConfigError, match="use a new --workdir"):
        train.train_and_evaluate(tiny_config(model="resnet18"), str(tmp_path))


def _run_main(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "menet_jax.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--config.me.p_start=1.5"], "config.me.p_start"),
        (["--config.dataset=imagenet"], "config.dataset"),
        (["--mode=eval"], "does not exist"),
    ],
)
def test_main_user_errors_are_one_line(tmp_path, args, fragment):
    r = _run_main("--config=configs/mnist_demo.py", f"--workdir={tmp_path / 'w'}", *args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert fragment in r.stderr


def test_main_trains_then_evaluates(tmp_path):
    args = [
        "--config=configs/mnist_demo.py",
        f"--workdir={tmp_path}",
        "--config.num_train_examples=128",
        "--config.num_train_steps=4",
        "--config.batch_size=32",
        "--config.me.num_masks=2",
        "--config.num_eval_examples=64",
        "--config.eval.num_examples=64",
        "--config.eval.attacks=clean",
        "--config.progress_bar=False",
        "--config.me.inference_p=0.45",  # keys that default to None take values from the CLI
        "--mode=train",
    ]
    r = _run_main(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "clean accuracy" in r.stdout
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["inference_p"] == 0.45 and summary["config"]["num_train_examples"] == 128


def test_adversarial_training_step_trains_on_pgd_examples(tmp_path):
    """Madry-style training through ME with BPDA runs in the jitted step and is resumable."""
    c = tiny_config(num_train_steps=2, **{"adv.enabled": True, "adv.steps": 3})
    s = train.train_and_evaluate(c, str(tmp_path / "a"))
    records = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses and all(np.isfinite(losses))
    assert s["steps"] == 2
    # The adversarial examples are what the step trains on: with eps = 0 the step equals
    # plain online training on the same batches (at p = 1, where the fresh masks of the final
    # reconstruction and the S' masks of plain training are the same all-ones mask).
    p1 = {"me.p_start": 1.0, "me.p_end": 1.0}
    c0 = tiny_config(
        num_train_steps=2, **{"adv.enabled": True, "adv.eps": 1e-12, "adv.steps": 1, **p1}
    )
    plain = tiny_config(num_train_steps=2, augment=False, **{"me.mode": "online", **p1})
    train.train_and_evaluate(c0, str(tmp_path / "eps0"))
    train.train_and_evaluate(plain, str(tmp_path / "plain"))
    jax.tree.map(
        lambda u, v: np.testing.assert_allclose(u, v, rtol=2e-2, atol=2e-4),
        params_of(tmp_path / "eps0"),
        params_of(tmp_path / "plain"),
    )


def test_adversarial_training_draws_a_fresh_final_mask_every_epoch(tmp_path, monkeypatch):
    """The final reconstruction of (image, copy) gets a new mask each time it is trained on,
    as in the authors' code; the S' mask of (image, copy) would repeat every epoch."""
    c = tiny_config()
    per_epoch = recipe.steps_per_epoch(c, c.num_train_examples)
    image, copy = jnp.array([5, 5]), jnp.array([1, 1])
    shape = (28, 28, 1)
    step = 3
    epoch0 = adversarial.final_masks(c.me, c.seed, step, image, copy, shape)
    epoch1 = adversarial.final_masks(c.me, c.seed, step + per_epoch, image, copy, shape)
    assert np.array_equal(epoch0[0], epoch0[1])  # a function of (step, image, copy)
    assert not np.array_equal(epoch0[0], epoch1[0])
    again = adversarial.final_masks(c.me, c.seed, step, image, copy, shape)
    assert np.array_equal(epoch0, again)  # reproducible: a resumed run repeats it
    sprime_key = rng.example_keys(c.seed, image, copy)[0]
    p = float(defense.training_ps(c.me)[1])
    s_mask = me.sample_mask(sprime_key, shape, p, channels=c.me.channels)
    assert not np.array_equal(epoch0[0], s_mask) and not np.array_equal(epoch1[0], s_mask)
    # The train step draws its final masks here (traced once), with the attack's BatchNorm in
    # train mode too.
    calls, real = [], adversarial.final_masks

    def spy(*args):
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(adversarial, "final_masks", spy)
    adv = {"adv.enabled": True, "adv.steps": 1, "adv.attack_bn": "train"}
    s = train.train_and_evaluate(tiny_config(num_train_steps=2, **adv), str(tmp_path))
    assert s["steps"] == 2 and len(calls) == 1


def _madry_examples(steps, **overrides):
    """Adversarial examples of a tiny Madry config (no ME; 256 digits in batches of 32, 8 steps
    an epoch; PGD-10, eps 0.3, step 0.05) at train `steps`, made inside a jit with the step
    traced as in the train step, from one untrained LeNet: (config, model, x, batch, examples)."""
    adv = {"adv.enabled": True, "adv.eps": 0.3, "adv.step_size": 0.05, "adv.steps": 10}
    c = tiny_config(**{"me.method": "none", **adv, **overrides})
    data = train.load_data(c)
    model = recipe.create_model(c, data.info)
    fn = adversarial.make_adversarial_examples(c, train.make_mesh(), 10, num_train=256)
    x = jnp.asarray(data.train_images[:32], jnp.float32) / 255
    idx = jnp.arange(32, dtype=jnp.int32)
    batch = {"label": jnp.asarray(data.train_labels[:32], jnp.int32), "image_idx": idx,
             "copy_idx": jnp.zeros(32, jnp.int32)}  # fmt: skip
    made = nnx.jit(fn)  # one trace: the step is traced
    return c, model, x, batch, {s: made(model, x, batch, jnp.int32(s)) for s in steps}


@pytest.fixture(scope="module")
def madry_examples():
    """The examples at steps 0, 4, 8, 20 with adv.eps_ramp_epochs=1 (a ramp of 8 steps) and
    without a ramp (the default 0)."""
    return {
        "ramp": _madry_examples([0, 4, 8, 20], **{"adv.eps_ramp_epochs": 1.0}),
        "none": _madry_examples([0, 8, 20]),
    }


def _linf(x, x_adv):
    return float(jnp.max(jnp.abs(x_adv - x)))


def test_eps_ramp_grows_the_perturbation_linearly_from_zero(madry_examples):
    """adv.eps_ramp_epochs=1 (8 steps): no perturbation at step 0, eps/2 at step 4 (PGD-10 at
    half the step size still reaches the ball's edge), eps from step 8 on, where the examples
    are those of training without the ramp."""
    assert adversarial.ramp_steps(tiny_config(**{"me.method": "none"}), 256) == 0
    ramped = tiny_config(**{"me.method": "none", "adv.eps_ramp_epochs": 1.0})
    assert adversarial.ramp_steps(ramped, 256) == 8
    _, _, x, _, at = madry_examples["ramp"]
    assert _linf(x, at[0]) == 0.0
    assert _linf(x, at[4]) == pytest.approx(0.15, abs=1e-6)
    assert _linf(x, at[8]) == pytest.approx(0.3, abs=1e-6)
    assert _linf(x, at[20]) == pytest.approx(0.3, abs=1e-6)
    flat = madry_examples["none"][-1]
    np.testing.assert_allclose(at[8], flat[8], atol=1e-6)
    np.testing.assert_allclose(at[20], flat[20], atol=1e-6)


def test_no_eps_ramp_makes_the_examples_of_plain_pgd(madry_examples):
    """The default adv.eps_ramp_epochs=0 attacks every step at adv.eps and adv.step_size: the
    examples are attacks.pgd's on the network's logits with the step's adversarial key."""
    from menet_jax import attacks

    c, model, x, batch, at = madry_examples["none"]
    assert c.adv.eps_ramp_epochs == 0
    clf = defense.DefendedClassifier.from_model(model, c, 10)
    fn = clf.logits_fn("menet", gradient="bpda", p=jnp.ones(32), bn="eval")
    for step in (0, 8):
        key = rng.step_key(c.seed, rng.ADVERSARIAL, step)
        want = attacks.pgd(fn, x, batch["label"], key, eps=0.3, step_size=0.05, steps=10)
        np.testing.assert_allclose(at[step], want, atol=1e-6)
    assert _linf(x, at[0]) == pytest.approx(0.3, abs=1e-6)


def test_eval_settings_are_validated_before_training(tmp_path):
    # `main` checks the whole config before training (training itself knows no eval keys).
    r = _run_main("--config=configs/mnist_demo.py", f"--workdir={tmp_path}", "--mode=train",
                  "--config.eval.attacks=pgd,laser")  # fmt: skip
    assert (r.returncode, r.stdout) == (1, "") and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert r.stderr.startswith("error: config.eval.attacks='pgd,laser' names unknown kinds")
    with pytest.raises(ConfigError, match="config.eval.eot.steps"):
        validate_eval(tiny_config(**{"eval.eot.steps": 0}).eval)
    # A budget key of the old flat layout names the section it moved to.
    c = tiny_config()
    c.eval.eot_steps = 10
    with pytest.raises(ConfigError, match="eval.eot_steps is not an evaluation key.*eval.pgd"):
        validate_eval(c.eval)
    assert not os.path.exists(tmp_path / "checkpoints")
