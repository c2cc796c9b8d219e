"""CIFAR-style ResNet (kuangliu/pytorch-cifar, the network the ME-Net authors train).

A 3x3 stem convolution with no max-pool, BasicBlock stages with 1x1-conv + BN projection
shortcuts where the shape changes, global average pooling and a linear classifier. ResNet-18 for
CIFAR-10 has 11,173,962 parameters, as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from menet_jax.models import layers


class BasicBlock(nnx.Module):
    """Two 3x3 conv-BN layers with a residual connection (post-activation, as in He et al.)."""

    def __init__(self, in_planes: int, planes: int, *, stride: int, rngs: nnx.Rngs):
        """Builds the block.

        Args:
          in_planes: input channels.
          planes: output channels.
          stride: stride of the first convolution (and of the projection shortcut).
          rngs: random streams for initialisation.
        """
        self.conv1 = layers.conv(in_planes, planes, 3, stride=stride, rngs=rngs)
        self.bn1 = layers.batch_norm(planes, rngs=rngs)
        self.conv2 = layers.conv(planes, planes, 3, rngs=rngs)
        self.bn2 = layers.batch_norm(planes, rngs=rngs)
        if stride != 1 or in_planes != planes:
            self.shortcut_conv = layers.conv(in_planes, planes, 1, stride=stride, rngs=rngs)
            self.shortcut_bn = layers.batch_norm(planes, rngs=rngs)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        return jax.nn.relu(out + shortcut)


class ResNet(nnx.Module):
    """CIFAR ResNet: 3x3 stem, BasicBlock stages, global average pool, linear.

    Call it on float32 images [B, H, W, C] in [0, 1]; it normalises them per channel first
    (when built with `mean`/`std`) and returns logits [B, num_classes].
    """

    def __init__(
        self,
        *,
        stage_sizes: Sequence[int],
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        widths: Sequence[int] = (64, 128, 256, 512),
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          stage_sizes: number of BasicBlocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
          num_classes: number of output logits (>= 2).
          input_shape: image shape (H, W, C).
          mean: per-channel mean subtracted first, or None for no normalisation.
          std: per-channel standard deviation divided by after the mean, or None.
          widths: channels of each stage; the first stage has stride 1, the others 2.
          rngs: random streams for initialisation.

        Raises:
          ValueError: on bad `num_classes`, `input_shape`, `mean`/`std` or stage settings.
        """
        self.num_classes = layers.check_num_classes(num_classes)
        self.input_shape = layers.check_input_shape(input_shape)
        channels = self.input_shape[2]
        self.mean, self.std = layers.check_mean_std(mean, std, channels=channels)
        if len(stage_sizes) != len(widths) or any(n < 1 for n in stage_sizes):
            raise ValueError(
                f"stage_sizes must be {len(widths)} positive block counts (one per width), "
                f"got {tuple(stage_sizes)!r}."
            )
        self.conv1 = layers.conv(channels, widths[0], 3, rngs=rngs)
        self.bn1 = layers.batch_norm(widths[0], rngs=rngs)
        blocks = []
        in_planes = widths[0]
        for stage, (num_blocks, planes) in enumerate(zip(stage_sizes, widths, strict=True)):
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride=stride, rngs=rngs))
                in_planes = planes
        self.blocks = nnx.List(blocks)
        self.linear = nnx.Linear(in_planes, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns float32 logits [B, num_classes] for images x [B, H, W, C] in [0, 1]."""
        x = layers.prepare_input(x, channels=self.input_shape[2], mean=self.mean, std=self.std)
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        for block in self.blocks:
            out = block(out)
        return self.linear(layers.global_avg_pool(out)).astype(jnp.float32)


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3))
