"""Madry et al.'s MNIST CNN, the network ME-Net calls "LeNet".

conv 32 5x5 SAME + ReLU, 2x2 max-pool, conv 64 5x5 SAME + ReLU, 2x2 max-pool, fc 1024 + ReLU,
fc num_classes. Pools use SAME padding as in Madry's TensorFlow code, so each halves the size
rounding up; the first fc layer's input size follows from `input_shape`. For 28x28x1 and ten
classes it has 3,274,634 parameters. No BatchNorm: `train()` / `eval()` change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from menet_jax.models import layers
from menet_jax.models.conv import Conv


def _pool(x: jax.Array) -> jax.Array:
    if x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
        # The max of the four strided views is the same 2x2/2 max-pool; its gradient is a few
        # elementwise selects instead of reduce_window's select-and-scatter, which is slow on
        # XLA:CPU (BENCHMARKS.md, "Training step").
        top = jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2])
        return jnp.maximum(top, jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))
    return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class LeNet(nnx.Module):
    """Madry's MNIST CNN; call on float32 [B, H, W, C] in [0, 1], returns logits."""

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          num_classes: number of output logits (>= 2).
          input_shape: image shape (H, W, C); the network only accepts this shape.
          mean: per-channel mean subtracted first, or None for no normalisation.
          std: per-channel standard deviation divided by after the mean, or None.
          rngs: random streams for initialisation.

        Raises:
          ValueError: on bad `num_classes`, `input_shape` or `mean`/`std`.
        """
        self.num_classes = layers.check_num_classes(num_classes)
        self.input_shape = layers.check_input_shape(input_shape)
        height, width, channels = self.input_shape
        self.mean, self.std = layers.check_mean_std(mean, std, channels=channels)
        # 5x5, stride 1, padded by 2: XLA's SAME; `Conv` for its fast gradient in attack loops.
        self.conv1 = Conv(channels, 32, 5, rngs=rngs)
        self.conv2 = Conv(32, 64, 5, rngs=rngs)
        # Two SAME 2x2 pools: ceil(ceil(h / 2) / 2) == ceil(h / 4).
        flat = -(-height // 4) * -(-width // 4) * 64
        self.fc1 = nnx.Linear(flat, 1024, rngs=rngs)
        self.fc2 = nnx.Linear(1024, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns float32 logits [B, num_classes] for images x [B, H, W, C] in [0, 1]."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"LeNet was built for images of shape {self.input_shape}, got a batch of shape "
                f"{x.shape}."
            )
        x = layers.prepare_input(x, channels=self.input_shape[2], mean=self.mean, std=self.std)
        out = _pool(jax.nn.relu(self.conv1(x)))
        out = _pool(jax.nn.relu(self.conv2(out)))
        out = jax.nn.relu(self.fc1(out.reshape(out.shape[0], -1)))
        return self.fc2(out).astype(jnp.float32)
