"""Orbax checkpoints in WORKDIR/checkpoints/<step>/, the run's config, and `load(workdir)`.

A checkpoint holds the training state `nnx.to_pure_dict` of (model, optimizer): entry 0 is the
model, entry 1 the optimizer. The config that made it is WORKDIR/config.json (with its schema
version; `menet_jax.config.to_json`). `load(workdir)` rebuilds the network from that config,
restores only the model's entry of the latest (or a given) step and returns a ready
`DefendedClassifier`; no optimizer is built.
"""

from __future__ import annotations

import contextlib

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from menet_jax import config as config_lib
from menet_jax import defense, input_pipeline, paths, recipe
from menet_jax.config import ConfigError

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
    # Orbax opens the folder through epath: a gs:// path stays a URL (never abspath'ed).
    return ocp.CheckpointManager(
        paths.path(paths.abspath(paths.join(workdir, "checkpoints"))), options=options
    )


def save(mngr: ocp.CheckpointManager, step: int, train_state: nnx.State) -> None:
    """Saves the (model, optimizer) state at `step` (asynchronously; atomic on completion)."""
    mngr.save(step, args=ocp.args.StandardSave(nnx.to_pure_dict(train_state)), force=True)


@contextlib.contextmanager
def _readable(mngr: ocp.CheckpointManager, step: int):
    """Turns any failure to read checkpoint `step` into one CheckpointError sentence."""
    try:
        yield
    except Exception as e:  # orbax raises many types for truncated or foreign files
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise CheckpointError(
            f"the checkpoint at {mngr.directory}/{step} could not be read ({type(e).__name__}: "
            f"{first}); it is corrupt, incomplete or from a different model: delete that step "
            "folder to fall back to an earlier one"
        ) from None


def _resolve_step(mngr: ocp.CheckpointManager, step: int | None) -> int | None:
    step = mngr.latest_step() if step is None else step
    if step is not None and step not in mngr.all_steps():
        raise CheckpointError(
            f"no checkpoint for step {step} in {mngr.directory}; available: {mngr.all_steps()}"
        )
    return step


def restore_latest(
    mngr: ocp.CheckpointManager, train_state: nnx.State, *, step: int | None = None
) -> tuple[int, nnx.State]:
    """Restores `step` (default: the latest) into a training state of the same structure.

    Returns:
      (step, state); (0, state) unchanged when the manager holds no checkpoint.
    """
    step = _resolve_step(mngr, step)
    if step is None:
        return 0, train_state
    pure = nnx.to_pure_dict(train_state)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
    with _readable(mngr, step):
        restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    nnx.replace_by_pure_dict(train_state, restored)
    return int(step), train_state


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes WORKDIR/config.json; refuses a workdir that holds a run of another model/dataset."""
    path = paths.join(workdir, CONFIG_FILE)
    if paths.exists(path):
        old = read_config(workdir)
        for key in _IDENTITY_KEYS:
            if old[key] != config[key]:
                raise ConfigError(
                    f"workdir {workdir} holds a run with {key}={old[key]!r}, not {config[key]!r}; "
                    "use a new --workdir"
                )
    if jax.process_index() == 0:
        paths.write_text(path, config_lib.to_json(config))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir's run was made with (upgraded to the current schema)."""
    path = paths.join(workdir, CONFIG_FILE)
    if not paths.exists(path):
        raise CheckpointError(f"{path} does not exist; is {workdir!r} a menet-jax workdir?")
    try:
        return config_lib.from_json(paths.read_text(path), source=path)
    except (ConfigError, UnicodeDecodeError) as e:
        raise CheckpointError(str(e)) from None


def restore_model(mngr: ocp.CheckpointManager, model: nnx.Module, step: int) -> None:
    """Reads only the model's entry of checkpoint `step` into `model` (in place)."""
    _, model_state = nnx.split(model)
    abstract = {0: jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(model_state))}
    args = ocp.args.PyTreeRestore(
        abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True,
    )
    path = paths.path(mngr.directory) / str(step) / "default"
    with _readable(mngr, step):
        restored = ocp.PyTreeCheckpointer().restore(path, args=args)
    nnx.replace_by_pure_dict(model_state, restored[0])
    nnx.update(model, model_state)


def load(workdir: str, *, step: int | None = None) -> defense.DefendedClassifier:
    """Restores a trained ME-Net from `workdir`.

    Args:
      workdir: the training run's workdir.
      step: the checkpoint step (default: the latest).

    Returns:
      A `DefendedClassifier` with `.config`, `.step`, `.network(x)` and
      `.defended(x, key, *, bpda=False, votes=0)`.
    """
    config = read_config(workdir)
    ckpt_dir = paths.join(workdir, "checkpoints")
    if not paths.isdir(ckpt_dir):
        raise CheckpointError(f"no checkpoints in {ckpt_dir}; train first (--mode=train)")
    mngr = manager(workdir, read_only=True)
    step = _resolve_step(mngr, step)
    if step is None:
        raise CheckpointError(f"no checkpoints in {ckpt_dir}; train first (--mode=train)")
    info = input_pipeline.get_info(config.dataset, data_dir=config.data_dir)
    model = recipe.create_model(config, info)
    restore_model(mngr, model, step)
    return defense.DefendedClassifier.from_model(model, config, info.num_classes, step=step)
