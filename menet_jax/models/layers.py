"""Building blocks shared by the model definitions: input checks, normalisation, conv and BN.

Convolutions pad like the authors' PyTorch models (`padding=k // 2` on every side) rather than
XLA's `SAME`, which pads stride-2 layers only at the bottom/right: same output sizes, and the
same pixel alignment, so PyTorch weights would carry over unchanged. BatchNorm uses PyTorch's
defaults (momentum 0.1 in PyTorch's convention, i.e. 0.9 here; epsilon 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from menet_jax.models.conv import Conv

# He (Kaiming) normal, fan-out: the initialisation torchvision and the WRN authors use for
# convolutions followed by ReLU.
he_normal = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def check_num_classes(num_classes: int) -> int:
    """Returns `num_classes` if it is an integer >= 2, else raises ValueError."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    return num_classes


def check_input_shape(input_shape: Sequence[int], *, min_size: int = 1) -> tuple[int, int, int]:
    """Returns `input_shape` as a tuple (H, W, C) after checking it.

    Args:
      input_shape: image shape (height, width, channels).
      min_size: smallest height and width the network can take.

    Returns:
      The shape as a tuple of three ints.

    Raises:
      ValueError: if it is not three positive integers or H or W is below `min_size`.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (
        shape is None
        or len(shape) != 3
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)
    ):
        raise ValueError(
            f"input_shape must be three positive integers (height, width, channels), "
            f"got {input_shape!r}."
        )
    if shape[0] < min_size or shape[1] < min_size:
        raise ValueError(
            f"input_shape {shape!r} is too small for this model: height and width must be "
            f">= {min_size}."
        )
    return shape


def check_mean_std(
    mean: Sequence[float] | None, std: Sequence[float] | None, *, channels: int
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Checks per-channel normalisation constants and returns them as tuples of floats.

    Args:
      mean: per-channel mean, or None (no normalisation; then `std` must be None too).
      std: per-channel standard deviation (all > 0), or None.
      channels: number of input channels; both must have this length.

    Returns:
      `(mean, std)` as tuples of Python floats (static, so they live in the module's graph
      definition, not in its state), or `(None, None)`.

    Raises:
      ValueError: if only one is given, a length differs from `channels`, or a std is <= 0.
    """
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ValueError(
            f"mean and std must be given together or both be None, got mean={mean!r}, std={std!r}."
        )
    mean_t = tuple(float(m) for m in mean)
    std_t = tuple(float(s) for s in std)
    if len(mean_t) != channels or len(std_t) != channels:
        raise ValueError(
            f"mean and std must have one value per input channel ({channels}), got "
            f"mean={mean!r}, std={std!r}."
        )
    if not all(s > 0 for s in std_t):
        raise ValueError(f"std values must all be > 0, got {std!r}.")
    return mean_t, std_t


def prepare_input(
    x: jnp.ndarray,
    *,
    channels: int,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> jnp.ndarray:
    """Casts a batch to float32, checks its layout and applies `(x - mean) / std` per channel.

    Args:
      x: images [B, H, W, C] in [0, 1].
      channels: the C the model was built for.
      mean: per-channel mean, or None for no normalisation.
      std: per-channel standard deviation, or None.

    Returns:
      The normalised float32 batch.

    Raises:
      ValueError: if `x` is not 4-D with `channels` channels.
    """
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(
            f"model input must have shape [batch, height, width, {channels}], got {x.shape}."
        )
    x = jnp.asarray(x, jnp.float32)
    if mean is not None:
        x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x


def conv(
    in_features: int, out_features: int, kernel_size: int, *, stride: int = 1, rngs: nnx.Rngs
) -> Conv:
    """A bias-free square convolution padded by `kernel_size // 2`, as in PyTorch models."""
    return Conv(
        in_features,
        out_features,
        kernel_size,
        stride=stride,
        use_bias=False,
        kernel_init=he_normal,
        rngs=rngs,
    )


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults; `model.train()` / `model.eval()` switch its mode."""
    return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, rngs=rngs)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Averages [B, H, W, C] over H and W, giving [B, C]."""
    return jnp.mean(x, axis=(1, 2))
