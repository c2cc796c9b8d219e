"""2-D convolutions whose input gradient XLA:CPU runs fast inside loops.

`conv2d` has the value of `lax.conv_general_dilated` (NHWC images, HWIO kernel, padding
kernel_size // 2 on every side, as the authors' PyTorch models pad) and its own reverse-mode
rule. JAX transposes a convolution, for the gradient in its input, into a convolution whose
kernel keeps the forward (H, W, I, O) axes with the roles of I and O swapped; inside the body of
a `lax.fori_loop` / `while_loop` (every jitted attack) XLA:CPU leaves that convolution in its
non-canonical form and runs it outside its fast convolution library, so a network's backward
pass is much slower in a loop than outside one (BENCHMARKS.md, "Attack loop speed"). Here the
input gradient is written out as the convolution of the output gradient with the kernel flipped
in H and W and its I and O axes swapped, an ordinary HWIO convolution (with the output gradient
dilated by the stride for strided layers), or, for a one-channel input at stride 1, as a matmul
and shifted sums. The kernel's gradient is JAX's own, or on a CPU, for wide inputs and strided
layers, one contraction per kernel tap (`_kernel_grad`). Reverse mode only (`jax.jvp` through it
raises).

`Conv` is `nnx.Conv` (same parameters, names and initialisation) computing through `conv2d`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

_NHWC = ("NHWC", "HWIO", "NHWC")


def _padding(kernel: jax.Array) -> tuple[tuple[int, int], tuple[int, int]]:
    kh, kw = kernel.shape[:2]
    return ((kh // 2, kh // 2), (kw // 2, kw // 2))


def _forward(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), _padding(kernel), dimension_numbers=_NHWC
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """Convolution of NHWC images x with an HWIO kernel at `stride`, padded by k // 2 each side.

    For an odd kernel at stride 1 this is XLA's SAME padding. See the module docstring for the
    gradient.
    """
    return _forward(x, kernel, stride)


def _conv2d_fwd(x, kernel, stride):
    return _forward(x, kernel, stride), (x, kernel)


def _input_grad_one_channel(g: jax.Array, kernel: jax.Array) -> jax.Array:
    """The stride-1 input gradient for a one-channel input, by a matmul and shifted sums.

    dx[b, y, x] = sum over (i, j, o) of g[b, y + p_h - i, x + p_w - j, o] kernel[i, j, 0, o]:
    every output pixel's g[b, y', x', :] . kernel[i, j, 0, :] for all (i, j) at once
    ([B*H*W, O] @ [O, kh*kw]), then each (i, j) slice added in at its offset: XLA:CPU runs the
    equivalent convolution with one output channel (MNIST's first layer) slower than this.
    """
    kh, kw, _, co = kernel.shape
    b, h, w = g.shape[:3]
    cols = (g.reshape(-1, co) @ kernel.reshape(kh * kw, co).T).reshape(b, h, w, kh, kw)
    cols = jnp.pad(cols, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0), (0, 0)))
    dx = sum(
        cols[:, kh - 1 - i : kh - 1 - i + h, kw - 1 - j : kw - 1 - j + w, i, j]
        for i in range(kh)
        for j in range(kw)
    )
    return dx[..., None]


def _input_grad(g: jax.Array, kernel: jax.Array, stride: int, shape) -> jax.Array:
    """The gradient in x (of spatial size `shape`) as an ordinary HWIO convolution of g."""
    if stride == 1 and kernel.shape[2] == 1:
        return _input_grad_one_channel(g, kernel)
    pads = []
    for n, k in zip(shape, kernel.shape[:2], strict=True):
        p = k // 2
        rest = (n + 2 * p - k) % stride  # input rows the last window did not reach
        pads.append((k - 1 - p, k - 1 - p + rest))
    flipped = jnp.swapaxes(jnp.flip(kernel, (0, 1)), 2, 3)  # [kh, kw, O, I]
    return jax.lax.conv_general_dilated(
        g, flipped, (1, 1), pads, lhs_dilation=(stride, stride), dimension_numbers=_NHWC
    )


# From this input width on (and for every strided layer), `_kernel_grad` contracts tap by tap on
# a CPU backend.
_TAPS_MIN_WIDTH = 32


def _kernel_grad(x: jax.Array, g: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The gradient in the kernel.

    On a CPU backend, for wide inputs and strided layers, one batched contraction per kernel tap:
    dk[i, j] = sum over images b of x_ij[b]^T g[b], where x_ij is the padded input shifted by
    (i, j) and sampled at the stride. XLA:CPU runs its own kernel-gradient convolution of such
    layers (few channels, many pixels) far slower than their forward pass (BENCHMARKS.md,
    "Training step"). Elsewhere JAX's own rule.
    """
    wide = x.shape[2] >= _TAPS_MIN_WIDTH or stride > 1
    if not wide or jax.default_backend() != "cpu":
        _, kernel_vjp = jax.vjp(lambda k: _forward(x, k, stride), kernel)
        return kernel_vjp(g)[0]
    kh, kw = kernel.shape[:2]
    ho, wo = g.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    taps = [
        jnp.einsum(
            "bhwc,bhwo->bco",
            xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride],
            g,
        ).sum(0)
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)


def _conv2d_bwd(stride, res, g):
    x, kernel = res
    return _input_grad(g, kernel, stride, x.shape[1:3]), _kernel_grad(x, g, kernel, stride)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nnx.Conv):
    """`nnx.Conv` with square strides and padding kernel_size // 2, computed by `conv2d`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        use_bias: bool = True,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        """As `nnx.Conv(in, out, (k, k), strides=stride, padding=k // 2 each side, ...)`."""
        pad = kernel_size // 2
        super().__init__(
            in_features,
            out_features,
            (kernel_size, kernel_size),
            strides=stride,
            padding=((pad, pad), (pad, pad)),
            use_bias=use_bias,
            rngs=rngs,
            **kwargs,
        )
        self.stride = int(stride)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns the convolution of x [B, H, W, in_features] (float32 parameters)."""
        out = conv2d(x, self.kernel[...], self.stride)
        return out if self.bias is None else out + self.bias[...]
