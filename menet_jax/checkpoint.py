"""Orbax checkpoints in WORKDIR/checkpoints/<step>/, the run's config, and `load(workdir)`.

A checkpoint holds the model and optimizer state (`nnx.to_pure_dict` of both); the config that
made it is WORKDIR/config.json. `load(workdir)` rebuilds the network from that config, restores
the latest (or a given) step and returns a ready `DefendedClassifier`.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from menet_jax.validation import ConfigError

CONFIG_FILE = "config.json"
# Keys that must match for a run to resume from (or evaluate) a workdir's checkpoints.
_IDENTITY_KEYS = ("dataset", "model")


class CheckpointError(ValueError):
    """A checkpoint or workdir is missing, unreadable or does not match."""


def manager(workdir: str, *, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager for WORKDIR/checkpoints keeping the latest `keep` steps."""
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")), options=options
    )


def save(mngr: ocp.CheckpointManager, step: int, state: nnx.State) -> None:
    """Saves the (model, optimizer) state at `step` (asynchronously; atomic on completion)."""
    mngr.save(step, args=ocp.args.StandardSave(nnx.to_pure_dict(state)), force=True)


def restore_latest(
    mngr: ocp.CheckpointManager, state: nnx.State, *, step: int | None = None
) -> tuple[int, nnx.State]:
    """Restores `step` (default: the latest) into a state of the same structure.

    Returns:
      (step, state); (0, state) unchanged when the manager holds no checkpoint.
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        return 0, state
    if step not in mngr.all_steps():
        raise CheckpointError(
            f"no checkpoint for step {step} in {mngr.directory}; available: {mngr.all_steps()}"
        )
    pure = nnx.to_pure_dict(state)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
    try:
        restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for truncated or foreign files
        raise CheckpointError(
            f"the checkpoint at {mngr.directory}/{step} could not be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); it is corrupt, incomplete or "
            "from a different model: delete that step folder to fall back to an earlier one"
        ) from None
    nnx.replace_by_pure_dict(state, restored)
    return int(step), state


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes WORKDIR/config.json; refuses a workdir that holds a run of another model/dataset."""
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        old = read_config(workdir)
        for key in _IDENTITY_KEYS:
            if old[key] != config[key]:
                raise ConfigError(
                    f"workdir {workdir} holds a run with {key}={old[key]!r}, not {config[key]!r}; "
                    "use a new --workdir"
                )
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config.to_json(indent=2))
        os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir's run was made with."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist; is {workdir!r} a menet-jax workdir?")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def load(workdir: str, *, step: int | None = None):
    """Restores a trained ME-Net from `workdir`.

    Args:
      workdir: the training run's workdir.
      step: the checkpoint step (default: the latest).

    Returns:
      A `menet_jax.defense.DefendedClassifier` with `.config`, `.network(x)` and
      `.defended(x, key, *, bpda=False, votes=0)`.
    """
    from menet_jax import defense, input_pipeline, train

    config = read_config(workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"no checkpoints in {ckpt_dir}; train first (--mode=train)")
    mngr = manager(workdir, read_only=True)
    if mngr.latest_step() is None:
        raise CheckpointError(f"no checkpoints in {ckpt_dir}; train first (--mode=train)")
    info = input_pipeline.get_info(config.dataset)
    model = train.create_model(config, info)
    optimizer = train.create_optimizer(model, config, num_train=1)
    graphdef, state = nnx.split((model, optimizer))
    step, state = restore_latest(mngr, state, step=step)
    model, _ = nnx.merge(graphdef, state)
    classifier = defense.DefendedClassifier(model, config, info.num_classes)
    classifier.step = step
    return classifier
