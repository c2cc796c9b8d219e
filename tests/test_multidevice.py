"""Data-parallel training on 8 forced CPU devices equals 1 device on the same global batch.

Each run is its own process (XLA_FLAGS must be set before jax is imported) with a timeout:
jitted loops around eigh/svd have hung on 2 forced CPU devices here, so the test uses 8.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import os, sys, numpy as np, jax
sys.path.insert(0, os.path.join({root!r}, "tests"))
from flax import nnx
from menet_jax import checkpoint, train
from test_train import tiny_config
assert jax.device_count() == {devices}, jax.devices()
c = tiny_config(num_train_steps=4, batch_size=16, **{{"me.mode": "online"}})
train.train_and_evaluate(c, {workdir!r})
clf = checkpoint.load({workdir!r})
flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(clf.state))
arrays = {{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}}
np.savez({out!r}, __step__=np.asarray(clf.step), **arrays)
print("ok", jax.device_count())
"""


def _run(devices: int, tmp_path) -> dict:
    out = tmp_path / f"params{devices}.npz"
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env["JAX_PLATFORMS"] = "cpu"
    code = SCRIPT.format(
        root=ROOT, devices=devices, workdir=str(tmp_path / f"w{devices}"), out=str(out)
    )
    try:
        r = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=420,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {devices}-device training run hung (timeout)")
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out))


def test_eight_devices_equal_one(tmp_path):
    one = _run(1, tmp_path)
    eight = _run(8, tmp_path)
    assert one.keys() == eight.keys()
    for name in sorted(set(one) - {"__step__"}):
        np.testing.assert_allclose(eight[name], one[name], rtol=2e-4, atol=2e-5, err_msg=name)
    # Both runs really took their 4 optimizer steps.
    assert int(one.pop("__step__")) == int(eight.pop("__step__")) == 4
