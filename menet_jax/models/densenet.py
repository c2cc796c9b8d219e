"""DenseNet (Huang et al. 2017) for small images, in the kuangliu/pytorch-cifar layout.

A 3x3 stem convolution of 2k channels and no max-pool (right for 32x32 and Tiny-ImageNet's 64x64
images), dense blocks of bottleneck layers BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) whose output is
concatenated in front of their input, transitions BN-ReLU-conv1x1 with compression 0.5 followed
by a 2x2 average pool, then BN-ReLU, global average pool and linear. DenseNet-121 is growth 32
with blocks (6, 12, 24, 16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from menet_jax.models import layers


class Bottleneck(nnx.Module):
    """Dense layer: BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), output concatenated with input."""

    def __init__(self, in_planes: int, growth_rate: int, *, rngs: nnx.Rngs):
        """Builds the layer.

        Args:
          in_planes: input channels.
          growth_rate: channels it adds (k).
          rngs: random streams for initialisation.
        """
        self.bn1 = layers.batch_norm(in_planes, rngs=rngs)
        self.conv1 = layers.conv(in_planes, 4 * growth_rate, 1, rngs=rngs)
        self.bn2 = layers.batch_norm(4 * growth_rate, rngs=rngs)
        self.conv2 = layers.conv(4 * growth_rate, growth_rate, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.conv1(jax.nn.relu(self.bn1(x)))
        out = self.conv2(jax.nn.relu(self.bn2(out)))
        return jnp.concatenate([out, x], axis=-1)


class Transition(nnx.Module):
    """BN-ReLU-conv1x1 to fewer channels, then a 2x2 average pool with stride 2."""

    def __init__(self, in_planes: int, out_planes: int, *, rngs: nnx.Rngs):
        """Builds the transition from `in_planes` to `out_planes` channels."""
        self.bn = layers.batch_norm(in_planes, rngs=rngs)
        self.conv = layers.conv(in_planes, out_planes, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.conv(jax.nn.relu(self.bn(x)))
        return nnx.avg_pool(out, (2, 2), strides=(2, 2), padding="VALID")


class DenseNet(nnx.Module):
    """DenseNet-BC for small images; call on float32 [B, H, W, C] in [0, 1], returns logits."""

    def __init__(
        self,
        *,
        block_sizes: Sequence[int],
        growth_rate: int,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        reduction: float = 0.5,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          block_sizes: bottleneck layers per dense block, e.g. (6, 12, 24, 16) for DenseNet-121.
          growth_rate: channels each bottleneck layer adds (k); the stem has 2k.
          num_classes: number of output logits (>= 2).
          input_shape: image shape (H, W, C); H and W must survive the transitions' pools.
          mean: per-channel mean subtracted first, or None for no normalisation.
          std: per-channel standard deviation divided by after the mean, or None.
          reduction: compression of the transitions, in (0, 1].
          rngs: random streams for initialisation.

        Raises:
          ValueError: on bad block sizes, growth rate, reduction, `num_classes`, `input_shape`
            or `mean`/`std`.
        """
        if len(block_sizes) < 1 or any(n < 1 for n in block_sizes):
            raise ValueError(f"block_sizes must be positive layer counts, got {block_sizes!r}.")
        if growth_rate < 1:
            raise ValueError(f"growth_rate must be >= 1, got {growth_rate!r}.")
        if not 0 < reduction <= 1:
            raise ValueError(f"reduction must be in (0, 1], got {reduction!r}.")
        self.num_classes = layers.check_num_classes(num_classes)
        # Each transition halves H and W, rounding down.
        self.input_shape = layers.check_input_shape(
            input_shape, min_size=2 ** (len(block_sizes) - 1)
        )
        channels = self.input_shape[2]
        self.mean, self.std = layers.check_mean_std(mean, std, channels=channels)
        planes = 2 * growth_rate
        self.conv1 = layers.conv(channels, planes, 3, rngs=rngs)
        stages = []
        for i, num_layers in enumerate(block_sizes):
            stage = []
            for _ in range(num_layers):
                stage.append(Bottleneck(planes, growth_rate, rngs=rngs))
                planes += growth_rate
            if i < len(block_sizes) - 1:
                out_planes = math.floor(planes * reduction)
                stage.append(Transition(planes, out_planes, rngs=rngs))
                planes = out_planes
            stages.append(nnx.List(stage))
        self.stages = nnx.List(stages)
        self.bn = layers.batch_norm(planes, rngs=rngs)
        self.linear = nnx.Linear(planes, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns float32 logits [B, num_classes] for images x [B, H, W, C] in [0, 1]."""
        x = layers.prepare_input(x, channels=self.input_shape[2], mean=self.mean, std=self.std)
        out = self.conv1(x)
        for stage in self.stages:
            for layer in stage:
                out = layer(out)
        out = jax.nn.relu(self.bn(out))
        return self.linear(layers.global_avg_pool(out)).astype(jnp.float32)


DenseNet121 = partial(DenseNet, block_sizes=(6, 12, 24, 16), growth_rate=32)
