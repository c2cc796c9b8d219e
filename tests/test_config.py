"""The config schema: defaults pass their checks, bad values fail, config.json versions."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from menet_jax import checkpoint, config, sprime, train
from menet_jax.config import ConfigError, load_config
from tests.test_train import ROOT, tiny_config

V1_FIXTURE = os.path.join(ROOT, "tests", "data", "config_v1_mnist_demo.json")


def test_every_default_passes_its_own_check():
    for prefix, keys in config.SECTIONS.items():
        for name, key in keys.items():
            assert key.ok(key.default), f"{prefix}.{name}={key.default!r}"
            assert key.doc and (key.default is not None or key.kind is not None), name
    config.validate(config.default_config())


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("num_train_examples", 0, "config.num_train_examples=0"),
        ("num_train_steps", -1, "positive integer or None"),
        ("me.inference_p", 1.5, "config.me.inference_p"),
        ("me.shrinkage", -1.0, "config.me.shrinkage"),
        ("me.threshold", "", "rank or chatterjee"),
        ("me.votes", 0, "config.me.votes"),
        ("momentum", 1.0, "config.momentum=1.0"),
        ("lr_boundaries_epochs", (150, 100), "increasing"),
        ("adv.steps", 0, "config.adv.steps"),
        ("adv.attack_bn", "batch", "eval or train"),
        ("adv.eps_ramp_epochs", -1.0, "config.adv.eps_ramp_epochs=-1.0 is not allowed"),
        ("model_width", 0, "config.model_width=0"),
        ("model_width", 32, "applies to resnet18 only"),  # the tiny config's model is lenet
        ("model_std", (0.2, 0.0, 0.2), "config.model_std"),
        ("model_mean", (0.5,), "set together"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(key, value, fragment):
    c = tiny_config(**{key: value})
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        config.validate(c)


def test_unset_keys_are_none_and_settable():
    c = load_config(os.path.join(ROOT, "configs/mnist_demo.py"))
    for key in ("num_train_examples", "num_train_steps", "num_eval_examples", "data_dir"):
        assert c[key] is None, key
    assert c.me.inference_p is None and c.me.shrinkage is None and c.me.threshold == "rank"
    c.me.inference_p = 0.5  # a typed placeholder takes a value of its type ...
    with pytest.raises(TypeError):
        c.me.shrinkage = "large"  # ... and refuses another


def test_v1_config_json_is_upgraded_to_the_current_meaning(tmp_path):
    """A config.json written before schema versions (by menet-jax 0.1's demo config with
    me.votes=0, eval.votes=7, me.shrinkage=2.5) reads as today's demo config with those
    settings."""
    shutil.copy(V1_FIXTURE, tmp_path / "config.json")
    old = checkpoint.read_config(str(tmp_path))
    expected = load_config(os.path.join(ROOT, "configs/mnist_demo.py"))
    expected.me.votes, expected.me.shrinkage = 7, 2.5
    expected = json.loads(expected.to_json())
    got = old.to_dict()
    # The training, me and adv keys mean today what they meant then; the eval section is the
    # evaluation's own (an evaluation reads the command line's), only its vote key moved.
    assert {k: v for k, v in got.items() if k != "eval"} == {
        k: v for k, v in expected.items() if k != "eval"
    }
    assert "votes" not in got["eval"] and got["eval"]["eot"]["steps"] == 40
    config.validate(old)


def test_newer_or_broken_config_json_is_refused_in_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"schema_version": 99, "config": {}}))
    with pytest.raises(checkpoint.CheckpointError, match="schema version 99.*upgrade menet-jax"):
        checkpoint.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="not valid JSON"):
        checkpoint.read_config(str(tmp_path))


def test_config_json_round_trip(tmp_path):
    c = tiny_config(**{"me.inference_p": 0.45})
    checkpoint.write_config(str(tmp_path), c)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["schema_version"] == config.SCHEMA_VERSION
    back = checkpoint.read_config(str(tmp_path))
    assert back.to_dict() == json.loads(c.to_json())


def test_workdir_written_before_schema_versions_loads_and_resumes(tmp_path):
    workdir = str(tmp_path)
    train.train_and_evaluate(tiny_config(num_train_steps=3), workdir)
    shutil.copy(V1_FIXTURE, tmp_path / "config.json")  # as menet-jax 0.1 left it
    clf = checkpoint.load(workdir)
    assert clf.step == 3 and clf.config.me.votes == 7
    summary = train.train_and_evaluate(tiny_config(num_train_steps=4), workdir)
    assert summary["resumed_from_step"] == 3
    assert json.loads((tmp_path / "config.json").read_text())["schema_version"] == 4


def test_v2_config_json_reads_with_nested_eval_sections(tmp_path):
    """A version-2 config.json (flat eval budgets, -1 for 'all', me.accelerated False meaning
    the method's default) reads as version 3 with the same meaning, and validates."""
    from menet_jax.evaluation.settings import eval_config, validate_eval

    v3 = json.loads(tiny_config().to_json())
    v2 = json.loads(json.dumps(v3))
    v2["me"].update(method="nucnorm", accelerated=False)
    flat = {"pgd_steps": [40], "long_pgd_steps": 1000, "long_pgd_examples": 20,
            "cw_kappas": [20.0, 50.0], "eot_samples": 4, "eot_steps": 40, "eot_step_size": -1.0,
            "eot_examples": -1, "cw_examples": -1, "apgd_losses": ["ce", "dlr"],
            "apgd_steps": 50, "apgd_eot_samples": 4, "apgd_examples": -1, "source_workdir": "",
            "cw_l2_confidence": 20.0, "cw_l2_steps": 100, "spsa_examples": 32, "spsa_steps": 30,
            "spsa_samples": 64, "spsa_learning_rate": 0.01, "spsa_delta": 0.01,
            "boundary_examples": 32, "boundary_steps": 300, "boundary_proposals": 1,
            "vote_examples": 200, "sweep_examples": 100,
            "eps_multipliers": [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]}  # fmt: skip
    common = {k: v3["eval"][k] for k in ("num_examples", "eps", "step_size", "gradient",
                                          "restarts", "eval_keys", "attacks")}  # fmt: skip
    v2["eval"] = {**common, **flat}
    (tmp_path / "config.json").write_text(json.dumps({"schema_version": 2, "config": v2}))
    got = checkpoint.read_config(str(tmp_path))
    assert got.me.accelerated is None and got.me.method == "nucnorm"
    ev = got.eval
    assert ev.eot.steps == 40 and ev.eot.step_size is None and ev.pgd.long_examples == 20
    assert ev.transfer.source_workdir is None and ev.sanity.examples == 100
    assert tuple(ev.apgd.losses) == ("ce", "dlr") and ev.boundary.proposals == 1
    assert ev.vote.examples == 200 and "eot_examples" not in ev
    ev.vote.steps = 20  # a key version 2 did not have; the rest is complete
    ev.autoattack_rand = eval_config().autoattack_rand  # nor this section (version 4's defaults)
    validate_eval(ev)


def test_sprime_cache_of_another_format_is_rebuilt_not_reused(tmp_path, monkeypatch):
    c = tiny_config(num_train_examples=8, **{"me.num_masks": 2})
    images = train.load_data(c).train_images
    first = np.array(sprime.build(c, images, str(tmp_path)))
    monkeypatch.setattr(sprime, "FORMAT", sprime.FORMAT + 1)
    second = np.array(sprime.build(c, images, str(tmp_path)))
    assert len(list((tmp_path / "sprime").glob("*.npy"))) == 2
    np.testing.assert_array_equal(first, second)  # same settings, same content
    # Settings that do not change S' keep the cache; ones that do give a new one.
    c.me.votes, c.me.mode = 3, "online"
    sprime.build(c, images, str(tmp_path))
    assert len(list((tmp_path / "sprime").glob("*.npy"))) == 2
    c.me.p_start = 0.5
    sprime.build(c, images, str(tmp_path))
    assert len(list((tmp_path / "sprime").glob("*.npy"))) == 3


def test_v3_config_json_reads_as_v4_with_the_v3_meaning(tmp_path):
    v4 = json.loads(tiny_config().to_json())
    v3 = json.loads(json.dumps(v4))
    for key in ("model_width", "model_mean", "model_std"):
        del v3[key]
    del v3["adv"]["attack_bn"]
    (tmp_path / "config.json").write_text(json.dumps({"schema_version": 3, "config": v3}))
    assert checkpoint.read_config(str(tmp_path)).to_dict() == v4


def test_config_json_without_the_eps_ramp_reads_as_no_ramp_and_keeps_its_model_hash(tmp_path):
    """adv.eps_ramp_epochs came within schema 4: a config.json written before it means no
    ramp, and the model it names keeps its cache key (`study.model_hash`)."""
    from menet_jax.study import model_hash

    c = load_config(os.path.join(ROOT, "configs/mnist_demo.py:adv"))
    old = json.loads(config.to_json(c))
    del old["config"]["adv"]["eps_ramp_epochs"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    back = checkpoint.read_config(str(tmp_path))
    assert back.adv.eps_ramp_epochs == 0 and back.to_dict() == json.loads(c.to_json())
    assert model_hash(back) == model_hash(c) == "18ab682a39a2cad2"  # as before the key
    c.adv.eps_ramp_epochs = 1.0
    assert model_hash(c) != "18ab682a39a2cad2"


def test_mnist_normalisation_needs_one_value(tmp_path):
    c = tiny_config(**{"model_mean": (0.1307,), "model_std": (0.3081,)})
    config.validate(c)
    c.model_mean, c.model_std = (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)
    with pytest.raises(ConfigError, match="one value per channel of mnist_5k"):
        config.validate(c)


AUTHORS = {  # variant: (p, masks, adversarially trained, decay epochs)
    "authors_p05": (0.5, 10, False, (100, 150)),
    "authors_p05_adv": (0.5, 1, True, (50, 100, 150)),
    "authors_p09": (0.9, 10, False, (100, 150)),
    "authors_p03": (0.3, 10, False, (100, 150)),
    "authors_p03_adv": (0.3, 1, True, (50, 100, 150)),
}


@pytest.mark.parametrize("variant", sorted(AUTHORS))
def test_authors_variants_set_the_released_models_settings(variant):
    from menet_jax.evaluation.settings import validate_eval

    c = load_config(os.path.join(ROOT, f"configs/cifar10.py:{variant}"))
    config.validate(c)
    validate_eval(c.eval)
    p, masks, adversarial, decay = AUTHORS[variant]
    assert (c.model, c.model_width, c.me.method, c.me.channels) == (
        "resnet18",
        64,
        "usvt",
        "concat",
    )
    assert c.me.p_start == c.me.p_end == c.me.inference_p == p and c.me.num_masks == masks
    assert c.me.rank_fraction == 0.8 and c.me.threshold == "rank"
    assert tuple(c.model_mean) == (0.4914, 0.4822, 0.4465)
    assert tuple(c.model_std) == (0.2023, 0.1994, 0.2010)
    assert c.adv.enabled == adversarial and tuple(c.lr_boundaries_epochs) == decay
    assert c.adv.attack_bn == ("train" if adversarial else "eval")


def test_tramer_and_one_mask_variants():
    from menet_jax.evaluation.settings import validate_eval

    c = load_config(os.path.join(ROOT, "configs/cifar10.py:authors_p05_adv,tramer"))
    validate_eval(c.eval)
    ev = c.eval
    assert (ev.num_examples, ev.eot.steps, ev.eot.samples, ev.eot.step_size) == (
        1000,
        200,
        41,
        None,
    )
    assert ev.eps == 8 / 255 and c.me.inference_p == 0.5
    c = load_config(os.path.join(ROOT, "configs/cifar10.py:adv,one_mask"))
    config.validate(c)
    assert c.me.num_masks == 1 and c.adv.enabled and c.me.method == "nucnorm"
    for name, decay in (
        ("mnist", (100, 150)),
        ("tiny_imagenet", (30, 60)),
        ("svhn", (50, 100, 150)),
    ):
        c = load_config(os.path.join(ROOT, f"configs/{name}.py:adv"))
        assert tuple(c.lr_boundaries_epochs) == decay, name


def test_madry_variants_are_adversarial_training_alone():
    attacks = {
        "mnist": (0.3, 0.01, 40),
        "mnist_demo": (0.3, 0.05, 10),  # the demo's CPU-size attack, as its `adv` variant
        "cifar10": (8 / 255, 2 / 255, 7),
        "svhn": (8 / 255, 2 / 255, 7),
        "tiny_imagenet": (8 / 255, 2 / 255, 7),
    }
    for name, attack in attacks.items():
        c = load_config(os.path.join(ROOT, f"configs/{name}.py:madry"))
        config.validate(c)
        adv = load_config(os.path.join(ROOT, f"configs/{name}.py:adv"))
        assert c.me.method == "none" and c.adv.enabled and c.adv.random_start, name
        assert (c.adv.eps, c.adv.step_size, c.adv.steps) == attack, name
        assert (c.adv.eps, c.adv.step_size, c.adv.steps) == (
            adv.adv.eps, adv.adv.step_size, adv.adv.steps,
        ), name  # fmt: skip
        assert c.adv.attack_bn == adv.adv.attack_bn and c.model == adv.model, name
        # Only the demo ramps eps up (docs/method.md §3.5): Madry et al. did not.
        assert c.adv.eps_ramp_epochs == (1 if name == "mnist_demo" else 0), name
        assert adv.adv.eps_ramp_epochs == 0, name
    # Variants compose: the CPU-scale CIFAR-10 run, adversarially trained without ME.
    c = load_config(os.path.join(ROOT, "configs/cifar10.py:cpu,madry"))
    config.validate(c)
    assert (c.model_width, c.num_train_steps) == (16, 1300)
    assert c.me.method == "none" and c.adv.enabled
