"""Two processes posing as a 2-task SLURM job on loopback, as on a real cluster.

Each process is `python -m menet_jax.main` with SLURM's variables (jax's own SLURM detection
derives the coordinator port from the job id, so each test takes a job id whose port is free),
gloo CPU collectives and forced host devices; both write one shared workdir. The reference is one
process with all the devices. The weights both runs saved give the same logits on the test digits
(relative 1e-4), read back here in this process: an independent reader of the checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from menet_jax import checkpoint, input_pipeline
from tests import forced_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [  # tests/test_train.py's tiny_config as flags
    "--config.num_train_examples=256",
    "--config.num_eval_examples=64",
    "--config.eval_batch_size=32",
    "--config.batch_size=32",
    "--config.num_train_steps=6",
    "--config.checkpoint_every_steps=3",
    "--config.log_every_steps=2",
    "--config.me.num_masks=2",
    "--config.progress_bar=False",
]
EVAL = [  # a tiny evaluation: clean, PGD (2 steps and 3 long) and BPDA+EOT on 16 digits
    "--mode=train_and_eval",
    "--config.eval.attacks=clean,pgd,eot",
    "--config.eval.num_examples=16",
    "--config.eval_batch_size=16",
    "--config.eval.eval_keys=2",
    "--config.eval.pgd.steps=(2,)",
    "--config.eval.pgd.long_steps=3",
    "--config.eval.pgd.long_examples=16",
    "--config.eval.eot.samples=2",
    "--config.eval.eot.steps=2",
]
SLURM_PORTS = (65535 - 2**12 + 1, 65535)  # jax: port = job id % 4096 + 61440


def _job_id() -> int:
    """A SLURM job id whose coordinator port (as jax derives it) is free on loopback."""
    for _ in range(200):
        port = random.randint(*SLURM_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port - SLURM_PORTS[0] + 2**12 * random.randint(1, 10_000)
    raise RuntimeError("no free port in SLURM's range")


def _env(devices: int, **extra) -> dict:
    env = forced_devices.env(devices, **extra)
    return {k: v for k, v in env.items() if k in extra or not k.startswith(("SLURM_", "JAX_COORD"))}


def _launch(workdir, *, processes: int, devices: int, flags=(), timeout=600, env_extra=None):
    """`processes` copies of the main command (a SLURM job when > 1): [(rc, stdout, stderr)]."""
    cmd = [sys.executable, "-m", "menet_jax.main", "--config=configs/mnist_demo.py",
           f"--workdir={workdir}", "--mode=train", *TINY, *flags]  # fmt: skip
    job = _job_id()
    procs = []
    for i in range(processes):
        slurm = {}
        if processes > 1:
            slurm = dict(SLURM_JOB_ID=str(job), SLURM_STEP_NODELIST="localhost",
                         SLURM_NTASKS=str(processes), SLURM_PROCID=str(i),
                         SLURM_LOCALID=str(i))  # fmt: skip
        env = _env(devices, **slurm, **(env_extra or {}))
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{processes} processes x {devices} devices did not finish in {timeout} s")
    return out


def _logits(workdir) -> np.ndarray:
    clf = checkpoint.load(str(workdir))
    images, _ = input_pipeline.load_split("mnist_5k", "test")
    return np.asarray(clf.network(input_pipeline.to_float(images[:64])), np.float64)


def _check_job(results, workdir, reference, *, devices: int):
    for i, (rc, stdout, stderr) in enumerate(results):
        assert rc == 0, f"process {i}: {stderr[-3000:]}"
        assert f"process {i} of 2" in stderr
        assert "clean accuracy" in stdout
    assert checkpoint.load(str(workdir)).step == 6
    # Process 0 alone wrote the metrics: one line per log window (steps 2, 4, 6) and the summary.
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4, 6, 6]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["devices"].startswith(f"{devices} x ")  # the global mesh
    got = _logits(workdir)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """One process on 4 devices, offline ME, trained and evaluated: the reference."""
    w = tmp_path_factory.mktemp("one") / "w"
    [(rc, _, stderr)] = _launch(w, processes=1, devices=4, flags=EVAL)
    assert rc == 0, stderr[-3000:]
    return w


@pytest.fixture(scope="module")
def reference(one_process):
    return _logits(one_process)


def test_two_processes_offline_equal_one_process(tmp_path, reference):
    """Offline ME on 2 x 2 devices: process 0 builds S' into the shared workdir while process 1
    waits for it; the weights give the one-device run's logits."""
    w = tmp_path / "w"
    results = _launch(w, processes=2, devices=2)
    _check_job(results, w, reference, devices=4)
    assert len(list((w / "sprime").glob("sprime-*.npy"))) == 1
    assert not list((w / "sprime").glob("*.partial*")) and not list((w / "sprime").glob(".shared*"))


def test_two_processes_online_equal_one_process(tmp_path, reference):
    """Online ME on 2 x 2 devices reconstructs the same S' entries inside the step, per device
    (an eigendecomposition per matrix: `linalg.eigh` one matrix at a time on a CPU backend with
    several devices)."""
    w = tmp_path / "w"
    results = _launch(w, processes=2, devices=2, flags=["--config.me.mode=online"])
    assert not (w / "sprime").exists()
    _check_job(results, w, reference, devices=4)


def test_two_processes_evaluate_as_one(tmp_path, one_process):
    """The reference's checkpoint evaluated by a 2-process job (2 devices each): every attack
    and judge runs over both processes' devices, and process 0 alone writes results that equal
    the one-process evaluation example by example."""
    w = tmp_path / "w"
    w.mkdir()
    shutil.copytree(one_process / "checkpoints", w / "checkpoints")
    shutil.copy(one_process / "config.json", w / "config.json")
    flags = [f for f in EVAL if not f.startswith("--mode")] + ["--mode=eval"]
    results = _launch(w, processes=2, devices=2, flags=flags)
    for i, (rc, stdout, stderr) in enumerate(results):
        assert rc == 0, f"process {i}: {stderr[-3000:]}"
        assert "headline robust accuracy" in stdout
    one, two = (json.loads((d / "results.json").read_text()) for d in (one_process, w))
    assert two["devices"]["processes"] == 2 and two["devices"]["count"] == 4
    assert one["headline"]["accuracy"] == two["headline"]["accuracy"]
    assert one["attacks"].keys() == two["attacks"].keys()
    for name, row in one["attacks"].items():
        assert two["attacks"][name]["accuracy"] == row["accuracy"], name
    z1, z2 = np.load(one_process / "results.npz"), np.load(w / "results.npz")
    assert sorted(z1.files) == sorted(z2.files)
    for key in z1.files:
        if z1[key].dtype == bool:  # per-example correctness under every judging draw
            np.testing.assert_array_equal(z2[key], z1[key], err_msg=key)
    assert not (w / "eval_partial").exists()


def test_failed_join_is_one_line(tmp_path):
    """Process 1 of a 2-task job whose process 0 never starts: one line, exit 1."""
    [(rc, stdout, stderr)] = _launch(
        tmp_path / "w", processes=1, devices=1, timeout=200,
        env_extra=dict(SLURM_JOB_ID=str(_job_id()), SLURM_STEP_NODELIST="localhost",
                       SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="1",
                       MENET_JOIN_TIMEOUT_S="1"),
    )  # fmt: skip
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert rc == 1, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(
        "error: this process could not join its 2-process"
    )
    assert "Check failure" not in stderr and not (tmp_path / "w").exists()


def test_half_set_coordinator_environment_is_one_line(tmp_path):
    env = _env(1, JAX_COORDINATOR_ADDRESS="127.0.0.1:1")
    r = subprocess.run([sys.executable, "-m", "menet_jax.main", "--config=configs/mnist_demo.py",
                        f"--workdir={tmp_path}"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES or JAX_PROCESS_ID is not: "
        "set all three (or none) to join a multi-process run"
    ]


def test_supervisor_passes_output_and_holds_back_jax_abort():
    """The supervisor's stderr copy: progress bars ('\\r' updates, partial lines) pass through
    byte for byte; jax's fatal report and its stack trace are kept back and returned."""
    import io
    import threading

    from menet_jax import cluster

    before = "training:  10%|#  | 1/10\rtraining:  20%|## | 2/10\rFLAGS note\nhalf a li"
    report = ("F1202 01:38:47.661079 8497 client.h:80] Terminating process because the JAX "
              "distributed service detected fatal errors. absl::Status: DEADLINE_EXCEEDED: x\n"
              "RPC: /xla.coordination.CoordinationService/RegisterTask\n"
              "*** Check failure stack trace: ***\n"
              "    @ 0x7f9a97420634 absl::SendToLog()\n")  # fmt: skip
    r, w = os.pipe()
    out = io.StringIO()
    got = {}
    t = threading.Thread(target=lambda: got.update(fatal=cluster._forward_stderr(r, out)))
    t.start()
    for piece in (before, "ne\n", report[:30], report[30:]):  # arrives in pieces
        os.write(w, piece.encode())
    os.close(w)
    t.join(10)
    assert out.getvalue() == before + "ne\n"
    assert got["fatal"] == report
    os.close(r)
