"""`run_study`: trains what a study needs, evaluates its unfinished points, writes its outputs.

The framework is `menet_jax.study.core` (declarations, model cache, points) and
`menet_jax.study.output` (DIR/NAME.md, .json, .png); docs/method.md §8 lists the studies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import ml_collections

from menet_jax import paths
from menet_jax.study import output
from menet_jax.study.core import ensure_model, get_study, model_dir, plan, run_point


def run_study(
    name: str,
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    command: str | None = None,
    config_spec: str | None = None,
) -> dict:
    """Runs study `name` on base `config` in `workdir`: trains the models it needs (cached in
    DIR/models), evaluates every unfinished point, writes DIR/NAME.md, .json and .png.

    Args:
      name: a registered study (`STUDIES`).
      config: the base config (e.g. `load_config("configs/mnist_demo.py")`).
      workdir: DIR; several studies may share it (and its models).
      overrides: dotted config overrides applied after the study's defaults (what
        `--config.KEY=VALUE` does on the command line).
      command: the command recorded in NAME.md (default: a Python call).
      config_spec: the file `config` came from (`configs/mnist_demo.py[:variant]`), needed by
        points that train as one of its variants (`Point.variant`).

    Returns:
      The content of DIR/NAME.json.
    """
    from menet_jax.config import validate
    from menet_jax.evaluation.settings import validate_eval

    study = get_study(name)
    if paths.is_remote(workdir):
        raise ValueError(
            f"a study's workdir must be a local folder, not {workdir!r}: its points link their "
            "models' checkpoints, which a bucket cannot hold; copy the folder to the bucket after"
        )
    t0 = time.time()
    base, entries, models = plan(study, config, workdir, overrides, config_spec=config_spec)
    for e in entries:
        validate(e.config)
        validate_eval(e.config.eval)
    os.makedirs(workdir, exist_ok=True)
    trained = [h for h, c in models.items() if ensure_model(workdir, h, c)]
    ran, pictures = [], None
    if study.pictures is None:
        ran = [e.point.name for e in entries if run_point(workdir, e)]
    else:
        dirs = {e.point.name: model_dir(workdir, e.model) for e in entries}
        pictures = study.pictures(base, dirs, os.path.join(workdir, f"{name}.png"))
    run_info = {
        "command": command or f"run_study({name!r}, config, {workdir!r})",
        "wall_time_s": round(time.time() - t0, 1),
        "models_trained": trained,
        "points_evaluated": ran,
        "overrides": {k: _jsonable(v) for k, v in (overrides or {}).items()},
    }
    return output.write(study, base, entries, workdir, run_info, pictures=pictures)


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v
