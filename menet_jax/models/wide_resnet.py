"""Wide ResNet (Zagoruyko & Komodakis 2016) with pre-activation blocks.

The layout of the common PyTorch WRN (xternalz/WideResNet-pytorch) and of Madry et al.'s CIFAR
model: a 3x3 stem of 16 channels, three groups of (depth - 4) / 6 blocks with 16k, 32k and 64k
channels (strides 1, 2, 2), each block BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a 1x1 projection of
the pre-activated input where the shape changes, then BN-ReLU, global average pool and linear.
WRN-28-10 for CIFAR-10 has 36,479,194 parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from menet_jax.models import layers


class WideBlock(nnx.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut."""

    def __init__(self, in_planes: int, planes: int, *, stride: int, rngs: nnx.Rngs):
        """Builds the block.

        Args:
          in_planes: input channels.
          planes: output channels.
          stride: stride of the first convolution (and of the projection shortcut).
          rngs: random streams for initialisation.
        """
        self.bn1 = layers.batch_norm(in_planes, rngs=rngs)
        self.conv1 = layers.conv(in_planes, planes, 3, stride=stride, rngs=rngs)
        self.bn2 = layers.batch_norm(planes, rngs=rngs)
        self.conv2 = layers.conv(planes, planes, 3, rngs=rngs)
        if stride != 1 or in_planes != planes:
            self.shortcut = layers.conv(in_planes, planes, 1, stride=stride, rngs=rngs)
        else:
            self.shortcut = None

    def __call__(self, x: jax.Array) -> jax.Array:
        pre = jax.nn.relu(self.bn1(x))
        # As in the reference code, the projection sees the pre-activated input; the identity
        # shortcut sees the raw one.
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(jax.nn.relu(self.bn2(out)))
        return out + shortcut


class WideResNet(nnx.Module):
    """WRN-depth-k for small images; call on float32 [B, H, W, C] in [0, 1], returns logits."""

    def __init__(
        self,
        *,
        depth: int,
        widen_factor: int,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          depth: total depth; (depth - 4) must be a positive multiple of 6.
          widen_factor: width multiplier k (>= 1).
          num_classes: number of output logits (>= 2).
          input_shape: image shape (H, W, C).
          mean: per-channel mean subtracted first, or None for no normalisation.
          std: per-channel standard deviation divided by after the mean, or None.
          rngs: random streams for initialisation.

        Raises:
          ValueError: on bad depth, widen factor, `num_classes`, `input_shape` or `mean`/`std`.
        """
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (e.g. 28), got {depth!r}.")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor!r}.")
        self.num_classes = layers.check_num_classes(num_classes)
        self.input_shape = layers.check_input_shape(input_shape)
        channels = self.input_shape[2]
        self.mean, self.std = layers.check_mean_std(mean, std, channels=channels)
        blocks_per_group = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = layers.conv(channels, 16, 3, rngs=rngs)
        blocks = []
        in_planes = 16
        for group, planes in enumerate(widths):
            for i in range(blocks_per_group):
                stride = 2 if group > 0 and i == 0 else 1
                blocks.append(WideBlock(in_planes, planes, stride=stride, rngs=rngs))
                in_planes = planes
        self.blocks = nnx.List(blocks)
        self.bn = layers.batch_norm(in_planes, rngs=rngs)
        self.linear = nnx.Linear(in_planes, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns float32 logits [B, num_classes] for images x [B, H, W, C] in [0, 1]."""
        x = layers.prepare_input(x, channels=self.input_shape[2], mean=self.mean, std=self.std)
        out = self.conv1(x)
        for block in self.blocks:
            out = block(out)
        out = jax.nn.relu(self.bn(out))
        return self.linear(layers.global_avg_pool(out)).astype(jnp.float32)


WRN28_10 = partial(WideResNet, depth=28, widen_factor=10)
