"""What a person watches and plots: progress bars with ETA (`progress`), and scalars written to
TensorBoard event files and JSON lines (`MetricWriter`)."""

from __future__ import annotations

import json
import os
import sys
import time

import jax
from tqdm.auto import tqdm


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


class MetricWriter:
    """Scalars to WORKDIR/metrics.jsonl (one JSON object per line) and TensorBoard event files."""

    def __init__(self, workdir: str, *, enabled: bool = True, name: str = "metrics"):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self._jsonl = open(os.path.join(workdir, f"{name}.jsonl"), "a")  # noqa: SIM115
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        for name, value in scalars.items():
            record[name] = float(value)
            self._tb.add_scalar(name, float(value), int(step))
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
