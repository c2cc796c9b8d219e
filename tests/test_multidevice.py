"""Data-parallel training on forced CPU devices equals 1 device on the same global batch.

Each run is its own process (XLA_FLAGS must be set before jax is imported) with a timeout. An
iterative solver's while_loop over a sharded batch used to stop on a global condition, a
cross-device reduction per iteration; online ME now runs per device (`sprime.
per_device_reconstruction`): the compiled step has no collective inside any loop, and Soft-Impute
trains on 2 and 8 devices as on one. On 2 or 4 forced devices a step holding an
eigendecomposition used to hang (USVT too, which has no loop): jaxlib's batched LAPACK kernel
waited on XLA:CPU's shared thread pool while both devices' programs held its threads; on a CPU
backend with several devices `linalg.eigh` now calls LAPACK one matrix at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests import forced_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import os, sys, numpy as np, jax
sys.path.insert(0, os.path.join({root!r}, "tests"))
from flax import nnx
from menet_jax import checkpoint, train
from test_train import tiny_config
assert jax.device_count() == {devices}, jax.devices()
c = tiny_config(num_train_steps=4, batch_size=16, **{overrides!r})
train.train_and_evaluate(c, {workdir!r})
clf = checkpoint.load({workdir!r})
flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(clf.state))
arrays = {{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}}
np.savez({out!r}, __step__=np.asarray(clf.step), **arrays)
print("ok", jax.device_count())
"""


def _run(devices: int, tmp_path, overrides=None, tag="", timeout=420) -> dict:
    overrides = overrides or {"me.mode": "online"}
    out = tmp_path / f"params{devices}{tag}.npz"
    env = forced_devices.env(devices)
    code = SCRIPT.format(
        root=ROOT,
        devices=devices,
        workdir=str(tmp_path / f"w{devices}{tag}"),
        out=str(out),
        overrides=overrides,
    )
    try:
        r = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {devices}-device training run{tag} hung (timeout {timeout} s)")
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out))


def test_two_devices_equal_one(tmp_path):
    """Online USVT (an eigendecomposition per matrix) on 2 devices: the run that hung."""
    one = _run(1, tmp_path)
    two = _run(2, tmp_path, timeout=240)
    assert one.keys() == two.keys()
    for name in sorted(set(one) - {"__step__"}):
        np.testing.assert_allclose(two[name], one[name], rtol=2e-4, atol=2e-5, err_msg=name)
    # Both runs really took their 4 optimizer steps.
    assert int(one.pop("__step__")) == int(two.pop("__step__")) == 4


def _assert_same(got: dict, one: dict, atol: float) -> None:
    assert one.keys() == got.keys()
    for name in sorted(set(one) - {"__step__"}):
        np.testing.assert_allclose(got[name], one[name], rtol=2e-4, atol=atol, err_msg=name)
    assert int(got["__step__"]) == int(one["__step__"]) == 4


SOFTIMPUTE = {"me.mode": "online", "me.method": "softimpute"}  # tracked SVT, the default


@pytest.fixture(scope="module")
def softimpute_one(tmp_path_factory):
    return _run(1, tmp_path_factory.mktemp("si"), SOFTIMPUTE, tag="si")


@pytest.mark.parametrize("devices", [2, 8])
def test_softimpute_online_per_device_equals_one(tmp_path, softimpute_one, devices):
    got = _run(devices, tmp_path, SOFTIMPUTE, tag="si", timeout=240)
    # Soft-Impute stops on a tolerance and S' entries are rounded to 1/255: a last-bit difference
    # of a per-device matrix product can move a pixel by one level, which four steps carry into
    # the weights (seen: 2.1e-5 on a bias; 1.2e-4 on one of 64 with the tests' XLA flags). A
    # wrong mask or reconstruction moves every weight by far more.
    _assert_same(got, softimpute_one, atol=3e-4)


HLO_SCRIPT = r"""
import re, sys, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, "tests")
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from menet_jax import input_pipeline, recipe, train
from test_train import tiny_config
c = tiny_config(batch_size=16, **{"me.mode": "online", "me.method": "softimpute"})
model = recipe.create_model(c, input_pipeline.get_info(c.dataset))
graphdef, ts = nnx.split((model, recipe.create_optimizer(model, c, num_train=256)))
mesh = train.make_mesh()
ts = jax.device_put(ts, NamedSharding(mesh, P()))
rng = np.random.default_rng(0)
batch = {"image": rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
         "label": np.zeros(16, np.int32), "image_idx": np.arange(16, dtype=np.int32),
         "copy_idx": np.zeros(16, np.int32)}
batch = train.to_global(batch, NamedSharding(mesh, P("data")))
step = train.make_train_step(c, graphdef, mesh, online=True, num_train=256)
text = step.lower(ts, batch, jnp.asarray(0, jnp.int32)).compile().as_text()
comps, cur = {}, None
for line in text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if m:
        cur = m.group(1)
        comps[cur] = []
    elif cur:
        comps[cur].append(line)
def reach(name, seen):
    if name in comps and name not in seen:
        seen.add(name)
        for line in comps[name]:
            for m in re.finditer(r"(?:body|condition|to_apply|calls)=%?([\w.\-]+)", line):
                reach(m.group(1), seen)
    return seen
loops = with_collectives = 0
for lines in comps.values():
    for line in lines:
        m = re.search(r" while\(.*condition=%?([\w.\-]+), body=%?([\w.\-]+)", line)
        if m:
            loops += 1
            inner = reach(m.group(1), set()) | reach(m.group(2), set())
            ops = ("all-reduce", "all-gather", "collective-permute", "all-to-all")
            with_collectives += any(o in x for n in inner for x in comps[n] for o in ops)
all_reduces = sum("all-reduce" in x for lines in comps.values() for x in lines)
print(loops, with_collectives, all_reduces)
"""


def test_online_solver_loops_hold_no_collective(tmp_path):
    """On 4 devices the compiled step's Soft-Impute loops hold no cross-device op (before
    `per_device_reconstruction`, one loop held the all-reduce of its stopping test)."""
    env = forced_devices.env(4)
    r = subprocess.run([sys.executable, "-c", HLO_SCRIPT], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    loops, with_collectives, all_reduces = map(int, r.stdout.split()[-3:])
    assert loops >= 1 and all_reduces >= 1  # the parser sees the loops and the gradient's sum
    assert with_collectives == 0


EIGH_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from menet_jax import mesh as mesh_lib
from menet_jax.me import linalg
assert jax.device_count() == 2 and linalg._one_at_a_time()
rng = np.random.default_rng(0)
m = 12
q = np.linalg.qr(rng.normal(size=(6, m, m)))[0]
g = q @ (np.arange(1.0, m + 1)[:, None] * np.swapaxes(q, -1, -2))  # eigenvalues 1..12
g = (g + 0.05 * rng.normal(size=g.shape)).reshape(2, 3, m, m)  # not symmetric: symmetrised
dg = rng.normal(size=g.shape)
w, u = jax.jit(linalg.eigh)(jnp.asarray(g, jnp.float32))
vw, vu = jax.jit(jax.vmap(linalg.eigh))(jnp.asarray(g, jnp.float32))
(_, _), (dw, du) = jax.jit(lambda a, b: jax.jvp(linalg.eigh, (a,), (b,)))(
    jnp.asarray(g, jnp.float32), jnp.asarray(dg, jnp.float32))
grad = jax.jit(jax.grad(lambda a: linalg.eigh(a)[0].sum()))(jnp.asarray(g, jnp.float32))
# Batches big enough for LAPACK's thread pool, per device, beside an all-reduce, five times.
mesh = mesh_lib.data_mesh()
per = mesh_lib.per_device(lambda a: linalg.gram_eigh(a)[0], mesh, 1)
x = jax.device_put(rng.normal(size=(64, 28, 28)).astype(np.float32),
                   NamedSharding(mesh, P("data")))
step = jax.jit(jax.grad(lambda s, a: jnp.sum(per(a * s))))
for _ in range(5):
    step(jnp.float32(1.0), x).block_until_ready()
np.savez({out!r}, w=w, u=u, vw=vw, vu=vu, dw=dw, du=du, grad=grad, g=g, dg=dg)
print("ok")
"""


def test_eigh_one_matrix_at_a_time_on_two_devices(tmp_path):
    """On 2 forced CPU devices `linalg.eigh` calls LAPACK once per matrix (jaxlib 0.10's batched
    kernel waits on the shared thread pool, which hung the training step; the runs above train
    through it): values, vectors, forward and reverse derivatives, under vmap too, against numpy
    float64; per-device batches beside an all-reduce, five times."""
    out = tmp_path / "eigh.npz"
    env = forced_devices.env(2)
    try:
        r = subprocess.run([sys.executable, "-c", EIGH_SCRIPT.format(out=str(out))], env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=180)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("eigendecompositions on 2 devices hung (timeout 180 s)")
    assert r.returncode == 0, r.stderr[-3000:]
    got = dict(np.load(out))
    g = got["g"]
    sym = (g + np.swapaxes(g, -1, -2)) / 2
    w_ref, u_ref = np.linalg.eigh(sym)  # float64
    for w, u in ((got["w"], got["u"]), (got["vw"], got["vu"])):
        np.testing.assert_allclose(w, w_ref, atol=1e-4)
        # the same eigenvectors up to sign: |<u_i, u_ref_i>| = 1
        cos = np.abs(np.sum(u * u_ref, axis=-2))
        np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    # Derivatives against central differences of float64 eigh along the tangent.
    dsym = (got["dg"] + np.swapaxes(got["dg"], -1, -2)) / 2
    h = 1e-6
    wp, up = np.linalg.eigh(sym + h * dsym)
    wm, um = np.linalg.eigh(sym - h * dsym)
    up *= np.sign(np.sum(up * u_ref, axis=-2, keepdims=True))
    um *= np.sign(np.sum(um * u_ref, axis=-2, keepdims=True))
    np.testing.assert_allclose(got["dw"], (wp - wm) / (2 * h), atol=2e-3)
    sign = np.sign(np.sum(got["u"] * u_ref, axis=-2, keepdims=True))
    np.testing.assert_allclose(got["du"] * sign, (up - um) / (2 * h), atol=2e-3)
    # d(sum of eigenvalues)/dG = d trace(G_sym)/dG = I.
    np.testing.assert_allclose(got["grad"], np.broadcast_to(np.eye(g.shape[-1]), g.shape),
                               atol=1e-4)  # fmt: skip
