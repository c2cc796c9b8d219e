"""What a person watches and plots: progress bars with ETA (`progress`), and scalars written to
TensorBoard event files and JSON lines (`MetricWriter`).

Both files grow as a run goes on, and a bucket cannot append to an object: in a remote workdir
(`gs://...`) `JsonLines` keeps the file's lines in memory (those of an earlier run included) and
rewrites the whole object on each write, and `EventFiles` writes TensorBoard events in a local
temporary folder and copies each event file to WORKDIR/tensorboard/ on every flush and on close.
A local workdir appends as before.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import jax
from tqdm.auto import tqdm

from menet_jax import paths


def progress(*, total: int, desc: str, unit: str, initial: int = 0, config=None) -> tqdm:
    """A tqdm bar with ETA on process 0 (disabled elsewhere or with config.progress_bar=False)."""
    enabled = jax.process_index() == 0 and (config is None or config.get("progress_bar", True))
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=1.0,
    )


class JsonLines:
    """Appends one JSON object per line to a local or remote file (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path
        if paths.is_remote(path):
            self._file = None
            self._text = paths.read_text(path) if paths.exists(path) else ""
            if self._text and not self._text.endswith("\n"):
                self._text += "\n"
        else:
            self._file = open(path, "a")  # noqa: SIM115

    def write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        if self._file is None:
            self._text += line
            paths.write_text(self.path, self._text)  # one upload of the whole file
        else:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class EventFiles:
    """A tensorboardX `SummaryWriter` (`.writer`) on a local or remote log folder.

    For a remote folder the writer writes into a local temporary folder; `flush` and `close` copy
    its event files (whole) to the remote folder under their own names.
    """

    def __init__(self, logdir: str, **kwargs):
        from tensorboardX import SummaryWriter

        self.logdir = logdir
        self._local = tempfile.mkdtemp(prefix="menet_tb_") if paths.is_remote(logdir) else None
        self.writer = SummaryWriter(self._local or logdir, **kwargs)

    def _sync(self) -> None:
        if self._local is None:
            return
        for name in os.listdir(self._local):
            paths.copy(os.path.join(self._local, name), paths.join(self.logdir, name))

    def flush(self) -> None:
        self.writer.flush()
        self._sync()

    def close(self) -> None:
        self.writer.close()
        self._sync()
        if self._local is not None:
            shutil.rmtree(self._local, ignore_errors=True)


class MetricWriter:
    """Scalars to WORKDIR/metrics.jsonl (one JSON object per line) and TensorBoard event files."""

    def __init__(self, workdir: str, *, enabled: bool = True, name: str = "metrics"):
        self.enabled = enabled
        if not enabled:
            return
        self._jsonl = JsonLines(paths.join(workdir, f"{name}.jsonl"))
        self._tb = EventFiles(paths.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        for name, value in scalars.items():
            record[name] = float(value)
            self._tb.writer.add_scalar(name, float(value), int(step))
        self._jsonl.write(record)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
