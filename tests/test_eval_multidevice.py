"""The evaluation sharded over 8 forced CPU devices equals the evaluation on 1 device.

One tiny run is trained here once and evaluated here on this process's one device, and in a
process of its own (XLA_FLAGS must be set before jax is imported) with a timeout on 8 forced host
devices (not 2 or 4: see tests/test_multidevice.py on XLA:CPU's all-reduce there). Every
example's masks and attack randomness are functions of its index and its global batch, so the
per-example correctness of every judging draw must be identical; the adversarial images agree
within float tolerance (per-device matrix products can differ in the last bits).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from menet_jax import evaluation, train
from tests import forced_devices
from tests.test_evaluate import shrink_eval
from tests.test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 12  # in batches of 16: on 8 devices one batch padded to 16, on 1 device one of 12


def eval_config():
    """Rows that reach the sharded paths at a small compile cost: the per-example judge
    (clean), an attack through per-device ME with exact gradients (pgd_2: differentiated
    through the per-device solver), the runtime checks (BPDA logits on the sharded batch), and
    a batch padded on 8 devices only. Measured once beside it, not run here (compiles cost a
    minute a row group on this machine): graybox, sanity (network and fixed-mask judges, a
    row reusing images), vote (the vote judge, APGD on the vote) and boundary (vmapped model
    calls) gave identical per-example results too."""
    c = shrink_eval(tiny_config(), N, s=2)
    c.eval_batch_size = 16
    c.eval.attacks, c.eval.gradient = "clean,pgd", "exact"
    c.eval.pgd.long_examples = 0
    return c


SCRIPT = r"""
import sys, jax
sys.path.insert(0, {root!r})
from menet_jax import evaluation
from tests.test_eval_multidevice import eval_config
assert jax.device_count() == 8, jax.devices()
evaluation.evaluate(eval_config(), {workdir!r})
"""


def _read(workdir: str) -> tuple[dict, dict]:
    with open(os.path.join(workdir, "results.json")) as f:
        report = json.load(f)
    return report, dict(np.load(os.path.join(workdir, "results.npz")))


def test_eight_devices_judge_every_example_as_one(tmp_path):
    base = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(num_train_steps=2, num_train_examples=64), base)
    eight_dir = str(tmp_path / "eight")
    shutil.copytree(base, eight_dir)
    env = forced_devices.env(8)
    code, timeout = SCRIPT.format(root=ROOT, workdir=eight_dir), 300
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 8-device evaluation hung (timeout {timeout} s)")
    assert r.returncode == 0, r.stderr[-3000:]
    evaluation.evaluate(eval_config(), base)  # here: one device
    one, one_arrays = _read(base)
    eight, eight_arrays = _read(eight_dir)

    assert one["devices"]["count"] == 1 and eight["devices"]["count"] == 8  # really sharded
    assert eight["devices"]["processes"] == 1
    assert sorted(one["attacks"]) == ["pgd_2"]
    assert sorted(eight["attacks"]) == sorted(one["attacks"])
    assert one_arrays.keys() == eight_arrays.keys()
    for name in sorted(one_arrays):
        if name.startswith("adversarial/"):  # float images: one ULP of ME moves a step's sign
            close = np.isclose(eight_arrays[name], one_arrays[name], rtol=0, atol=1e-5)
            assert close.mean() > 0.999, name
        else:  # per-example correctness of every draw, and the rates made from them
            np.testing.assert_array_equal(eight_arrays[name], one_arrays[name], err_msg=name)
    for name, row in one["attacks"].items():
        assert eight["attacks"][name]["accuracy"] == row["accuracy"], name
    assert eight["headline"] == one["headline"]
    assert eight["checks"] == one["checks"]  # the runtime checks among them
    # Each file was written once, by process 0, and the resumable rows were cleaned up.
    assert not os.path.exists(os.path.join(eight_dir, "eval_partial"))


def test_eval_batch_not_divisible_by_devices_is_one_line(tmp_path):
    """7 forced devices do not divide eval_batch_size 16: one sentence and a non-zero exit, no
    traceback (main turns the ConfigError into one line)."""
    env = forced_devices.env(7)
    workdir = tmp_path / "w"
    workdir.mkdir()
    cmd = [sys.executable, "-m", "menet_jax.main", "--mode=eval", f"--workdir={workdir}",
           "--config=configs/mnist_demo.py", "--config.eval_batch_size=16"]  # fmt: skip
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: config.eval_batch_size=16")
    assert "eval_batch_size=16 must be divisible by the number of devices (7)" in r.stderr
