r"""Converts the ME-Net authors' PyTorch checkpoints into a menet-jax workdir (docs/method.md §7).

  python -m menet_jax.convert --torch=menet_p05_adv.ckpt \
      --config=configs/cifar10.py:authors_p05_adv --workdir=/tmp/authors_p05_adv
  python -m menet_jax.main --config=configs/cifar10.py:authors_p05_adv \
      --workdir=/tmp/authors_p05_adv --mode=eval

The file is what the authors' train_adv.py / train_pure.py saved, `torch.save({'model': <their
models/resnet.py ResNet18, bare or in nn.DataParallel>, 'acc', 'epoch', 'rng_state'})` under
torch 0.4.1 (legacy serialisation), or any `torch.save` (legacy or zip) of that module or of its
`state_dict()`. It is read by `menet_jax.torch_pickle`, without torch and without running code
from the file. The weights go into the config's network (which must be resnet18 of the same
widths: `--config.model_width`), convolution kernels OIHW -> HWIO, the linear layer's (out, in)
-> (in, out), BatchNorm's weight / bias / running mean / running variance as scale / bias / mean
/ var (epsilon 1e-5 on both sides). The workdir then holds config.json, an Orbax checkpoint at
step 0 (the model, and a fresh optimizer state) and converted_from.json (the source file's name,
sha256, format and the 'acc' / 'epoch' it recorded): `--mode=eval`, `checkpoint.load` and the
studies read it as any trained run. (`--mode=train` on it would fine-tune from these weights.)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import ml_collections
import numpy as np

from menet_jax import torch_pickle
from menet_jax.torch_pickle import Module, TorchPickleError

PROVENANCE_FILE = "converted_from.json"
AUTHORS_MEAN = (0.4914, 0.4822, 0.4465)
AUTHORS_STD = (0.2023, 0.1994, 0.2010)
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_EPS = 1e-5  # torch's and menet_jax.models.layers.batch_norm's BatchNorm epsilon


class ConvertError(ValueError):
    """A checkpoint cannot be converted for the given config (one sentence)."""


def _walk(module: Module, prefix: str, out: dict[str, np.ndarray], bns: list) -> None:
    """Collects a module stand-in's parameters and buffers as a flat state dict."""
    if module.torch_class.endswith("BatchNorm2d"):
        bns.append((prefix.rstrip("."), module.__dict__))
    for group in ("_parameters", "_buffers"):
        for name, value in (module.__dict__.get(group) or {}).items():
            if value is not None:
                out[prefix + name] = value
    for name, child in module.children().items():
        if child is not None:
            _walk(child, f"{prefix}{name}.", out, bns)


def state_dict(obj: Any) -> tuple[dict[str, np.ndarray], dict]:
    """The flat `name -> array` state of a loaded checkpoint, and facts about its form.

    Accepts the authors' dict (`{'model': module or state_dict, ...}`), a bare module stand-in
    or a plain state dict; strips nn.DataParallel's `module.` prefix; checks every BatchNorm
    layer's epsilon (and that it is affine with running statistics) where the module says.
    """
    info: dict[str, Any] = {}
    if isinstance(obj, dict) and "model" in obj:
        for key in ("acc", "epoch"):
            if key in obj:
                value = np.asarray(obj[key])
                info[key] = value.item() if value.size == 1 else None
        obj = obj["model"]
    bns: list = []
    flat: dict[str, np.ndarray] = {}
    if isinstance(obj, Module):
        info["wrapper"] = obj.torch_class.rsplit(".", 1)[1]
        _walk(obj, "", flat, bns)
    elif isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        info["wrapper"] = "state_dict"
        flat = {str(k): v for k, v in obj.items()}
    else:
        raise ConvertError(
            "the checkpoint holds neither a module, nor a state dict, nor the authors' "
            "{'model': ...} dict"
        )
    if flat and all(k.startswith("module.") for k in flat):
        info["wrapper"] += " (DataParallel)" if info["wrapper"] == "state_dict" else ""
        flat = {k[len("module.") :]: v for k, v in flat.items()}
    for name, attrs in bns:
        eps = attrs.get("eps", _EPS)
        if abs(float(eps) - _EPS) > 1e-12 or attrs.get("affine", True) is not True:
            raise ConvertError(
                f"BatchNorm layer {name} has eps={eps!r}, affine={attrs.get('affine')!r}; the "
                f"network here uses affine BatchNorm with eps {_EPS}"
            )
    return flat, info


def _torch_names(num_blocks: list[int]) -> dict[str, tuple]:
    """torch state-dict name -> (path in the Flax ResNet's pure dict, kind)."""
    names: dict[str, tuple] = {"conv1.weight": (("conv1", "kernel"), "conv")}
    names |= {f"bn1.{t}": (("bn1", f), "bn") for t, f in _BN.items()}
    i = 0
    for stage, n in enumerate(num_blocks):
        for b in range(n):
            tp, fp = f"layer{stage + 1}.{b}.", ("blocks", i)
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("shortcut.0", "shortcut.1")):
                flax_conv = "shortcut_conv" if conv == "shortcut.0" else conv
                flax_bn = "shortcut_bn" if bn == "shortcut.1" else bn
                names[f"{tp}{conv}.weight"] = ((*fp, flax_conv, "kernel"), "conv")
                for t, f in _BN.items():
                    names[f"{tp}{bn}.{t}"] = ((*fp, flax_bn, f), "bn")
            i += 1
    names["linear.weight"] = (("linear", "kernel"), "linear")
    names["linear.bias"] = (("linear", "bias"), "bn")
    return names


def _to_flax(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    if kind == "linear":
        return value.T  # (out, in) -> (in, out)
    return value


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def fill(pure: dict, flat: dict[str, np.ndarray], *, width: int) -> int:
    """Writes the torch state `flat` into the Flax ResNet-18's pure dict; returns arrays set.

    Raises:
      ConvertError: a missing or unexpected entry, or a shape that does not fit.
    """
    stem = flat.get("conv1.weight")
    if stem is None or stem.ndim != 4:
        raise ConvertError("the checkpoint has no conv1.weight: it is not a CIFAR ResNet")
    if stem.shape[0] != width:
        raise ConvertError(
            f"the checkpoint's network is {stem.shape[0]} channels wide at its stem, the config's "
            f"resnet18 {width}: pass --config.model_width={stem.shape[0]}"
        )
    names = {k: v for k, v in _torch_names([2, 2, 2, 2]).items() if _has(pure, v[0])}
    given = {k for k in flat if not k.endswith("num_batches_tracked")}
    for missing in sorted(set(names) - given):
        raise ConvertError(f"the checkpoint lacks {missing}: it is not the authors' ResNet-18")
    for extra in sorted(given - set(names)):
        raise ConvertError(
            f"the checkpoint holds {extra}, which the ResNet-18 here has no place for"
        )
    for name, (path, kind) in names.items():
        value = _to_flax(np.asarray(flat[name], np.float32), kind)
        target = _get(pure, path)
        if tuple(target.shape) != value.shape:
            raise ConvertError(
                f"the checkpoint's {name} has shape {tuple(flat[name].shape)}, which does not fit "
                f"the config's network ({tuple(target.shape)} here)"
            )
        _set(pure, path, value)
    return len(names)


def _has(tree, path) -> bool:
    try:
        _get(tree, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(torch_path: str, config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Reads `torch_path` and writes `workdir` as a menet-jax run of `config`.

    Returns:
      The provenance written to WORKDIR/converted_from.json.

    Raises:
      ConvertError, TorchPickleError, ConfigError, CheckpointError: one sentence each.
    """
    import jax
    from flax import nnx

    from menet_jax import checkpoint, input_pipeline, paths, recipe
    from menet_jax.config import validate

    validate(config)
    if config.model != "resnet18":
        raise ConvertError(f"config.model={config.model!r}: only resnet18 checkpoints convert")
    if paths.isdir(paths.join(workdir, "checkpoints")):
        raise ConvertError(f"{workdir} already holds checkpoints; use a new --workdir")
    flat, info = state_dict(torch_pickle.load(torch_path))
    model = recipe.create_model(
        config, input_pipeline.get_info(config.dataset, data_dir=config.data_dir)
    )
    _, model_state = nnx.split(model)
    pure = nnx.to_pure_dict(model_state)
    count = fill(pure, flat, width=int(config.model_width))
    nnx.replace_by_pure_dict(model_state, jax.tree.map(jax.numpy.asarray, pure))
    nnx.update(model, model_state)
    optimizer = recipe.create_optimizer(model, config, num_train=1)  # momentum buffers: zero
    paths.makedirs(workdir)
    checkpoint.write_config(workdir, config)
    mngr = checkpoint.manager(workdir, keep=int(config.keep_checkpoints))
    checkpoint.save(mngr, 0, nnx.state((model, optimizer)))
    mngr.wait_until_finished()
    mngr.close()
    provenance = {
        "source": os.path.basename(torch_path),
        "sha256": _sha256(torch_path),
        "format": "zip" if _is_zip(torch_path) else "legacy",
        "holds": info.get("wrapper"),
        "acc": info.get("acc"),
        "epoch": info.get("epoch"),
        "arrays": count,
        "model_width": int(config.model_width),
        "normalisation": {"mean": _listed(config.model_mean), "std": _listed(config.model_std)},
    }
    paths.write_text(paths.join(workdir, PROVENANCE_FILE), json.dumps(provenance, indent=2))
    return provenance


def _listed(v):
    return None if v is None else [float(x) for x in v]


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def main(argv: list[str]) -> int:
    """`python -m menet_jax.convert --torch=CKPT --config=CONFIG[:variant] --workdir=DIR`."""
    from absl import flags

    from menet_jax.checkpoint import CheckpointError
    from menet_jax.cli import define_config_flag, fail, flag_error
    from menet_jax.config import ConfigError

    fl = flags.FlagValues()  # its own flags: main's --config / --workdir may be defined too
    flags.DEFINE_string(
        "torch", None, "The PyTorch checkpoint (.ckpt / .pt / .pth).", flag_values=fl
    )
    define_config_flag("config", "configs/X.py[:variant]", flag_values=fl, sys_argv=list(argv))
    flags.DEFINE_string("workdir", None, "The menet-jax workdir to write.", flag_values=fl)
    try:
        fl(argv)
    except Exception as e:
        message = flag_error(e, argv)
        if message is None:
            raise
        return fail(message)
    for name in ("torch", "config", "workdir"):
        if fl[name].value is None:
            return fail(f"--{name} is required")
    config = fl.config
    if config.get("model_std") is None or tuple(config.model_std) != AUTHORS_STD:
        print(
            "note: the config does not normalise with the authors' CIFAR-10 mean/std; their "
            "models need configs/cifar10.py:authors_* (or --config.model_mean/model_std)",
            file=sys.stderr,
        )
    try:
        p = convert(fl.torch, config, fl.workdir)
    except (ConvertError, TorchPickleError, ConfigError, CheckpointError) as e:
        return fail(f"{fl.torch}: {e}" if isinstance(e, TorchPickleError) else str(e))
    print(
        f"converted {p['source']} ({p['holds']}, {p['format']}, {p['arrays']} arrays; recorded "
        f"acc {p['acc']}, epoch {p['epoch']}) into {fl.workdir}; evaluate with python -m "
        f"menet_jax.main --config=... --workdir={fl.workdir} --mode=eval"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
