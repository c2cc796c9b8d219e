"""Classifiers ME-Net trains (Flax NNX, NHWC) and the name -> constructor registry.

Every model is called on float32 images [B, H, W, C] in [0, 1] and returns float32 logits
[B, num_classes]; per-channel normalisation `(x - mean) / std`, when given, is its first
operation, so it applies after ME-Net's matrix estimation. Models with BatchNorm switch mode with
`model.train()` / `model.eval()`; their state is only `nnx.Param` and `nnx.BatchStat`.

Modules: one per family (`resnet`, `wide_resnet`, `lenet`, `densenet`), each a class and its
named variants as partials; `layers` holds what they share (PyTorch-style conv and BatchNorm,
input and argument checks) and `conv` the convolution they all use (`nnx.Conv` with an input
gradient XLA:CPU runs fast inside attack loops). A new model is a module here, an entry in
`MODELS` and a shape/parameter-count test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flax import nnx

from menet_jax.models.densenet import DenseNet, DenseNet121
from menet_jax.models.lenet import LeNet
from menet_jax.models.resnet import ResNet, ResNet18
from menet_jax.models.wide_resnet import WRN28_10, WideResNet

__all__ = [
    "MODELS",
    "DenseNet",
    "DenseNet121",
    "LeNet",
    "ResNet",
    "ResNet18",
    "WRN28_10",
    "WideResNet",
    "check_fits",
    "create_model",
]

MODELS: dict[str, Callable[..., nnx.Module]] = {
    "resnet18": ResNet18,
    "wrn28_10": WRN28_10,
    "lenet": LeNet,
    "densenet121": DenseNet121,
}

# The largest height and width a model is built for (models not listed take any size). Madry's
# MNIST CNN flattens its last 7x7 feature map into a 1024-unit layer whose weights grow with the
# image's area: at 64x64 that layer alone would hold 16.8M parameters, five times the network.
MAX_INPUT_SIZE: dict[str, int] = {"lenet": 32}


def check_fits(name: str, input_shape: Sequence[int]) -> None:
    """Raises ValueError, in one sentence, if model `name` is not built for `input_shape` images."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}.")
    h, w = input_shape[0], input_shape[1]
    limit = MAX_INPUT_SIZE.get(name)
    if limit is not None and max(h, w) > limit:
        others = ", ".join(sorted(n for n in MODELS if n not in MAX_INPUT_SIZE))
        raise ValueError(
            f"{name} takes images of at most {limit}x{limit}, these are {h}x{w}; choose one of "
            f"{others} (--config.model=...)"
        )


def create_model(
    name: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    width: int | None = None,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Builds a registered model.

    Args:
      name: one of `MODELS` ("resnet18", "wrn28_10", "lenet", "densenet121").
      num_classes: number of output logits (>= 2).
      input_shape: image shape (H, W, C).
      mean: per-channel mean, normalising inputs inside the model; None for none.
      std: per-channel standard deviation (> 0); None when `mean` is None.
      width: resnet18 only: channels of the first stage (the others 2x, 4x, 8x); None: 64.
      rngs: random streams for parameter initialisation.

    Returns:
      The model, in training mode (call `.eval()` for inference).

    Raises:
      ValueError: on an unknown name or bad `num_classes`, `input_shape`, `mean`, `std` or
        `width`.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}.")
    extra = {}
    if width is not None:
        if name != "resnet18" or isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width applies to resnet18 only (a positive int); got {width!r}.")
        extra["widths"] = (width, 2 * width, 4 * width, 8 * width)
    return MODELS[name](
        num_classes=num_classes, input_shape=input_shape, mean=mean, std=std, rngs=rngs, **extra
    )
