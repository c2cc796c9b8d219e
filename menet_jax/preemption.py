"""Preemption: SIGTERM stops training, the S' build and the evaluation at a resumable point.

A preempted TPU VM or a requeued SLURM job gets SIGTERM, then SIGKILL some seconds later.
Within `watch()` the loops ask `requested(step)` after each unit of work (a training step, an S'
chunk, an evaluation row); when it says yes they save what they have (a checkpoint at that step,
the chunk's progress record, the row in eval_partial/) and raise `Preempted`, which `main` turns
into one line and the exit code `EXIT_CODE` (143 = 128 + SIGTERM, what a shell reports for a
process SIGTERM ended, so launchers read it as "terminated; requeue"). The same command resumes.

Every process must stop at the same step, or one would save and exit while the others wait in a
collective. Where jax.distributed runs its preemption service (the default after
`jax.distributed.initialize()`; it owns SIGTERM through its own notifier),
`multihost_utils.reached_preemption_sync_point` is the answer: the processes agree on the step
after the furthest one any of them had reached. Its step ids must keep growing for the life of
the process (a notice fixes the sync point after the last id seen), so it is given a count of
the calls so far, which goes on from training to the evaluation, not the loops' own step
numbers, which start again in each phase. Otherwise SIGTERM goes to a handler of our own
that only sets a flag: one process reads it directly; several processes without the service
agree on it with one small all-gather every `every` steps.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_CODE = 128 + signal.SIGTERM  # 143
AGREE_EVERY = 10  # steps between all-gathers of the flag (several processes, no jax service)


class Preempted(Exception):
    """A loop stopped cleanly on SIGTERM; its work is saved and the same command resumes."""


class _Watch:
    depth = 0  # nested watch() blocks share one handler and one flag
    flag = False
    jax_service = False
    previous = None
    installed = False
    sync_id = 0  # calls to jax's sync point so far in this process; never reset


_W = _Watch()


def _handler(signum, frame) -> None:
    del signum, frame
    _W.flag = True  # nothing else: the loops decide where to stop


def _jax_service() -> bool:
    """Whether jax.distributed runs with its preemption service (which then owns SIGTERM)."""
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


@contextlib.contextmanager
def watch():
    """Within this block SIGTERM asks the loops to stop (`requested`); the handler that was
    there before is put back afterwards. Nested blocks share the outermost one's flag."""
    outer = _W.depth == 0
    if outer:
        _W.flag, _W.installed = False, False
        _W.jax_service = _jax_service()
        # Python can set handlers only in the main thread; elsewhere SIGTERM keeps its default.
        if not _W.jax_service and threading.current_thread() is threading.main_thread():
            _W.previous = signal.signal(signal.SIGTERM, _handler)
            _W.installed = True
    _W.depth += 1
    try:
        yield
    finally:
        _W.depth -= 1
        if outer and _W.installed:
            signal.signal(signal.SIGTERM, _W.previous)
            _W.installed = False


def requested(step: int, *, every: int = AGREE_EVERY) -> bool:
    """Whether to stop after `step`: the same answer on every process.

    Call it with consecutive `step` values at the same points on every process (the sync point
    of jax's service and the all-gather are collectives of a kind).

    Args:
      step: the number of the unit of work just finished (training step, S' chunk, row).
      every: with several processes and no jax preemption service, the flag is agreed on every
        `every` steps only (an all-gather); a stop comes at most `every` - 1 steps late.
    """
    if _W.depth == 0:
        return False
    if _W.jax_service:
        _W.sync_id += 1  # the same count on every process: they call at the same points
        return multihost_utils.reached_preemption_sync_point(_W.sync_id)
    if jax.process_count() == 1:
        return _W.flag
    if step % every:
        return False
    return bool(np.max(multihost_utils.process_allgather(np.int32(_W.flag))))
