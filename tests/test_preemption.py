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

from menet_jax import checkpoint, evaluation, preemption, sprime, state, train
from tests.test_evaluate import shrink_eval
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


def main_cmd(config: str, workdir, mode: str) -> list[str]:
    return [sys.executable, "-m", "menet_jax.main", f"--config={config}", f"--workdir={workdir}",
            f"--mode={mode}"]  # fmt: skip


def run_to_end(cmd) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def sigterm_midway(cmd, progress, *, least: int):
    """Runs cmd; once progress() >= least, pauses it, reads progress() again (stable while
    paused), sends SIGTERM and resumes it. Returns (exit code, stderr, progress when signalled)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
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
            time.sleep(0.02)
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


TRAIN = {"num_train_steps": 200, "checkpoint_every_steps": 1000, "log_every_steps": 1}


def test_sigterm_during_training_saves_the_current_step_and_the_same_command_resumes(tmp_path):
    cfg = config_file(tmp_path, "train", TRAIN)
    work = tmp_path / "preempted"
    cmd = main_cmd(cfg, work, "train")

    def logged_step():
        lines = (work / "metrics.jsonl").read_text().split("\n")[:-1] if (
            work / "metrics.jsonl").exists() else []  # fmt: skip
        return json.loads(lines[-1])["step"] if lines else None

    rc, err, at = sigterm_midway(cmd, logged_step, least=3)
    assert rc == 143, err[-3000:]
    line = one_line(err)
    stop = int(line.split()[3].rstrip(";"))
    assert line == f"preempted at step {stop}; checkpoint saved; run the same command to resume"
    assert at <= stop < TRAIN["num_train_steps"]  # the step in progress finished, then it stopped
    steps = sorted(int(d) for d in os.listdir(work / "checkpoints") if d.isdigit())
    assert steps == [stop]  # none periodic: checkpoint_every_steps is beyond the run

    # An uninterrupted run to the same step, in this process (CPU training is deterministic):
    # the state the resumed run restores equals it bitwise, optimizer included.
    ref = tmp_path / "to_stop"
    train.train_and_evaluate(tiny_config(**{**TRAIN, "num_train_steps": stop}), str(ref))
    restored = [restore_state(d, stop) for d in (work, ref)]
    jax.tree.map(np.testing.assert_array_equal, *restored)

    # The same command finishes the run; it ends where an uninterrupted run ends.
    run_to_end(cmd)
    assert json.load(open(work / "summary.json"))["resumed_from_step"] == stop
    full = tmp_path / "full"
    train.train_and_evaluate(tiny_config(**TRAIN), str(full))
    a, b = checkpoint.load(str(work)), checkpoint.load(str(full))
    assert a.step == b.step == TRAIN["num_train_steps"]
    x = train.load_data(tiny_config()).test_images[:32].astype(np.float32) / 255.0
    np.testing.assert_allclose(a.network(x), b.network(x), rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6),
        nnx.to_pure_dict(a.state), nnx.to_pure_dict(b.state),
    )  # fmt: skip


def restore_state(workdir, step):
    """The training state (model and optimizer) that resuming from `step` restores."""
    c = tiny_config(**TRAIN)
    data = train.load_data(c)
    model = state.create_model(c, data.info)
    opt = state.create_optimizer(model, c, len(data.train_images))
    _, train_state = nnx.split((model, opt))
    mngr = checkpoint.manager(str(workdir), read_only=True)
    got, train_state = checkpoint.restore_latest(mngr, train_state, step=step)
    assert got == step
    return nnx.to_pure_dict(train_state)


BUILD = {"num_train_steps": 1, "me.num_masks": 4, "me.build_batch_size": 2}  # 512 chunks


def test_sigterm_during_the_sprime_build_stops_after_a_chunk_and_resumes(tmp_path):
    cfg = config_file(tmp_path, "build", BUILD)
    work = tmp_path / "w"
    cmd = main_cmd(cfg, work, "train")
    c = tiny_config(**BUILD)
    total = state.num_copies(c) * c.num_train_examples
    final = work / "sprime" / f"sprime-{sprime.fingerprint(c, c.num_train_examples)}.npy"
    progress_file = f"{final}.progress"

    def built():
        try:
            return json.load(open(progress_file))["done"]
        except (OSError, ValueError):
            return None

    rc, err, at = sigterm_midway(cmd, built, least=8)
    assert rc == 143, err[-3000:]
    line = one_line(err)
    assert line.startswith("preempted during the S' build after ") and "resume" in line
    done = built()
    assert at <= done < total and f"after {done} of {total} entries" in line
    assert done - at <= c.me.build_batch_size  # stopped after the chunk in progress
    assert not final.exists() and not (work / "checkpoints").exists()

    run_to_end(cmd)
    assert not os.path.exists(progress_file)
    ref = sprime.build(c, train.load_data(c).train_images, str(tmp_path / "ref"))
    np.testing.assert_array_equal(np.load(final), ref)


EVAL = {"eval.attacks": "fgsm,pgd"}  # rows clean, fgsm, pgd_3, pgd_long_5


def test_sigterm_during_evaluation_stops_after_a_row_and_resumes(tmp_path):
    work = str(tmp_path / "w")
    train.train_and_evaluate(tiny_config(), work)
    c = shrink_eval(tiny_config(**EVAL), 16)
    reference = evaluation.evaluate(c, work)  # uninterrupted, in this process
    for name in ("results.json", "results.md", "results.npz"):
        os.remove(os.path.join(work, name))
    cmd = main_cmd(config_file(tmp_path, "eval", EVAL, eval_examples=16), work, "eval")
    partial = os.path.join(work, "eval_partial")

    def rows_saved():
        if not os.path.isdir(partial):
            return None
        return sum(f.endswith(".npz") and ".partial" not in f for f in os.listdir(partial))

    rc, err, at = sigterm_midway(cmd, rows_saved, least=1)
    assert rc == 143, err[-3000:]
    line = one_line(err)
    saved = rows_saved()
    rows = list(reference["attacks"])
    assert at <= saved < len(rows) + 1 and saved - at <= 1  # the row in progress, then stop
    assert line.startswith("preempted during the evaluation after row ") and "resume" in line
    assert not os.path.exists(os.path.join(work, "results.json"))

    run_to_end(cmd)
    again = json.load(open(os.path.join(work, "results.json")))
    assert len(again["resumed_rows"]) == saved
    assert again["headline"]["accuracy"] == reference["headline"]["accuracy"]
    for name, row in reference["attacks"].items():
        assert again["attacks"][name]["accuracy"] == row["accuracy"], name
    assert not os.path.exists(partial)
