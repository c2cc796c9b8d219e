"""SIGTERM (preemption) during training, the S' build and the evaluation: real processes, real
signals. Each interrupted run is `python -m menet_jax.main` on a tiny config; the test pauses it
(SIGSTOP) once it has made progress, reads how far it got, sends SIGTERM and lets it go on
(SIGCONT), so the signal always lands mid-way. The same command then resumes; the results are
compared with uninterrupted runs made in this process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from flax import nnx

from menet_jax import checkpoint, preemption, recipe, sprime, train
from tests.test_train import ROOT, tiny_config

TIMEOUT = 240


def config_file(tmp_path, name: str, overrides: dict, *, eval_examples: int | None = None) -> str:
    """A config file holding tiny_config(**overrides) (shrink_eval'ed if eval_examples)."""
    path = tmp_path / f"{name}.py"
    shrink = f"c = shrink_eval(c, {eval_examples})" if eval_examples else ""
    path.write_text(textwrap.dedent(f"""\
        from tests.test_evaluate import shrink_eval
        from tests.test_train import tiny_config

        def get_config():
            c = tiny_config(**{overrides!r})
            {shrink}
            return c
        """))  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The runs' environment: one persistent compilation cache for all of them, so each program
    is compiled once (a cached executable is the same program, so results are unchanged)."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # fmt: skip


def main_cmd(config: str, workdir, mode: str) -> list[str]:
    return [sys.executable, "-m", "menet_jax.main", f"--config={config}", f"--workdir={workdir}",
            f"--mode={mode}"]  # fmt: skip


def run_to_end(cmd, env) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def sigterm_midway(cmd, env, progress, *, least: int):
    """Runs cmd; once progress() >= least, pauses it, reads progress() again (stable while
    paused), sends SIGTERM and resumes it. Returns (exit code, stderr, progress when signalled)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    deadline = time.time() + TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it was signalled: {proc.stderr.read()[-3000:]}")
            assert time.time() < deadline, "the run made no progress"
            seen = progress()
            if seen is not None and seen >= least:
                proc.send_signal(signal.SIGSTOP)
                seen = progress()
                if seen is not None:
                    break
                proc.send_signal(signal.SIGCONT)  # caught mid-write: try again
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err, seen


def one_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.splitlines() if line.startswith("preempted")][-1]


# ---------------------------------------------------------------------------------------------


def test_watch_sets_a_flag_and_restores_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with preemption.watch():
            assert not preemption.requested(1)
            with preemption.watch():  # nested: one flag
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # Python runs the handler between bytecodes
            assert preemption.requested(2) and not seen
        assert not preemption.requested(3)  # outside any watch()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert seen == [signal.SIGTERM]  # the handler that was there before is back
        with preemption.watch():
            assert not preemption.requested(4)  # a fresh block starts unflagged
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert preemption.EXIT_CODE == 143


# 128 S' chunks of 4 entries, then 12 steps; the checkpoint at step 1000 never comes.
TRAIN = {"num_train_steps": 12, "checkpoint_every_steps": 1000, "log_every_steps": 1,
         "me.build_batch_size": 4}  # fmt: skip


EVAL = {"eval.attacks": "fgsm,network_only"}  # rows clean, fgsm, network_only


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    """The run never interrupted, with a checkpoint after every step, then its evaluation
    (results.json); it compiles what the other runs load from the cache."""
    work = tmp_path_factory.mktemp("uninterrupted")
    steps = TRAIN["num_train_steps"]
    every_step = {**TRAIN, **EVAL, "checkpoint_every_steps": 1, "keep_checkpoints": steps}
    cfg = config_file(work, "every_step", every_step, eval_examples=16)
    run_to_end(main_cmd(cfg, work, "train_and_eval"), env)
    return work


def test_sigterm_during_the_sprime_build_then_training_and_the_same_command_resumes(
    tmp_path, env, uninterrupted
):
    """One command, preempted twice: in the S' build, then in training; then it finishes."""
    c = tiny_config(**TRAIN)
    work = tmp_path / "preempted"
    cmd = main_cmd(config_file(tmp_path, "train", TRAIN), work, "train")

    # 1. In the S' build: it stops after the chunk in progress, its progress record written.
    total = recipe.num_copies(c) * c.num_train_examples
    final = work / "sprime" / f"sprime-{sprime.fingerprint(c, c.num_train_examples)}.npy"
    progress_file = f"{final}.progress"

    def built():
        try:
            return json.load(open(progress_file))["done"]
        except (OSError, ValueError):
            return None

    rc, err, at = sigterm_midway(cmd, env, built, least=8)
    assert rc == 143, err[-3000:]
    line = one_line(err)
    assert line.startswith("preempted during the S' build after ") and "resume" in line
    done = built()
    assert at <= done < total and f"after {done} of {total} entries" in line
    assert done - at <= c.me.build_batch_size  # stopped after the chunk in progress
    assert not final.exists() and not (work / "checkpoints").exists()

    # 2. The same command finishes the build (equal bitwise to one built in a single go),
    # and is preempted in training: a checkpoint at the step in progress, none periodic.
    def logged_step():
        path = work / "metrics.jsonl"
        lines = path.read_text().split("\n")[:-1] if path.exists() else []
        return json.loads(lines[-1])["step"] if lines else None

    rc, err, at = sigterm_midway(cmd, env, logged_step, least=3)
    assert rc == 143, err[-3000:]
    np.testing.assert_array_equal(np.load(final), np.load(next(uninterrupted.glob("sprime/*.npy"))))
    assert not os.path.exists(progress_file)
    line = one_line(err)
    stop = int(line.split()[3].rstrip(";"))
    assert line == f"preempted at step {stop}; checkpoint saved; run the same command to resume"
    assert at <= stop < TRAIN["num_train_steps"]  # the step in progress finished, then it stopped
    assert sorted(int(d) for d in os.listdir(work / "checkpoints") if d.isdigit()) == [stop]
    # What resuming restores equals bitwise the uninterrupted run's state at that step
    # (CPU training is deterministic), optimizer included.
    restored = [restore_state(d, stop) for d in (work, uninterrupted)]
    jax.tree.map(np.testing.assert_array_equal, *restored)

    # 3. The same command finishes the run where the uninterrupted run ends.
    run_to_end(cmd, env)
    assert json.load(open(work / "summary.json"))["resumed_from_step"] == stop
    a, b = checkpoint.load(str(work)), checkpoint.load(str(uninterrupted))
    assert a.step == b.step == TRAIN["num_train_steps"]
    x = train.load_data(c).test_images[:32].astype(np.float32) / 255.0
    np.testing.assert_allclose(a.network(x), b.network(x), rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6),
        nnx.to_pure_dict(a.state), nnx.to_pure_dict(b.state),
    )  # fmt: skip


def restore_state(workdir, step):
    """The training state (model and optimizer) that resuming from `step` restores."""
    c = tiny_config(**TRAIN)
    data = train.load_data(c)
    model = recipe.create_model(c, data.info)
    opt = recipe.create_optimizer(model, c, len(data.train_images))
    _, train_state = nnx.split((model, opt))
    mngr = checkpoint.manager(str(workdir), read_only=True)
    got, train_state = checkpoint.restore_latest(mngr, train_state, step=step)
    assert got == step
    return nnx.to_pure_dict(train_state)


def test_sigterm_during_evaluation_stops_after_a_row_and_resumes(tmp_path, env, uninterrupted):
    work = str(uninterrupted)  # only read by the training test: checkpoints and S'
    cmd = main_cmd(config_file(tmp_path, "eval", {**TRAIN, **EVAL}, eval_examples=16), work, "eval")
    reference = json.load(open(os.path.join(work, "results.json")))  # uninterrupted
    for name in ("results.json", "results.md", "results.npz"):
        os.remove(os.path.join(work, name))
    partial = os.path.join(work, "eval_partial")

    def rows_saved():
        if not os.path.isdir(partial):
            return None
        return sum(f.endswith(".npz") and ".partial" not in f for f in os.listdir(partial))

    rc, err, at = sigterm_midway(cmd, env, rows_saved, least=1)
    assert rc == 143, err[-3000:]
    line = one_line(err)
    saved = rows_saved()
    assert at <= saved <= at + 1  # the row in progress was saved, then it stopped
    assert line.startswith("preempted during the evaluation after row ") and "resume" in line
    assert f"({saved} of 3 rows saved in eval_partial/)" in line  # clean, fgsm, network_only
    assert not os.path.exists(os.path.join(work, "results.json"))

    run_to_end(cmd, env)
    again = json.load(open(os.path.join(work, "results.json")))
    assert len(again["resumed_rows"]) == saved
    assert again["headline"]["accuracy"] == reference["headline"]["accuracy"]
    for name, row in reference["attacks"].items():
        assert again["attacks"][name]["accuracy"] == row["accuracy"], name
    assert not os.path.exists(partial)


AGREE = """
import os, signal, sys, time
import jax
jax.config.update("jax_enable_preemption_service", sys.argv[3] == "service")
rank = int(sys.argv[2])
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=rank)
from menet_jax import preemption
with preemption.watch():  # around both phases, as in main
    with preemption.watch():  # a first phase (training) ends without a signal
        assert not any(preemption.requested(step) for step in range(1, 21))
    if rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # only process 1 is preempted, between the phases
    with preemption.watch():  # a second phase (the evaluation) counts its rows from 1 again
        for step in range(1, 1000):
            time.sleep(0.01 * (1 + rank))  # process 1 is the slower one
            if preemption.requested(step):
                print("stopped at", step, flush=True)
                break
"""


@pytest.mark.parametrize("how", ["service", "allgather"])
def test_two_processes_stop_at_the_same_step(how):
    """SIGTERM to one of two jax.distributed processes (loopback) between two phases of work,
    the second counting its steps from 1 again (the evaluation after training): both stop after
    the same step of the second phase, through jax's preemption sync point (which notices the
    signal a second or so late) or, without that service, our all-gather (at its first
    agreement)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [
        subprocess.Popen([sys.executable, "-c", AGREE, port, str(rank), how], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    stops = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        stops.append(int(out.split()[-1]))
    assert stops[0] == stops[1], stops
    if how == "allgather":
        assert stops[0] == preemption.AGREE_EVERY  # the first agreement
