"""Matrix estimation (ME): random masks, p schedules, solvers and image reconstruction.

mask = sample_mask(key, images.shape, p)          # 1 = observed
rec = reconstruct(images, mask, method="usvt")    # [B, H, W, C] in [0, 1]
rec = mask_and_reconstruct(key, images, p, method="softimpute", accelerated=True)
rec = reconstruct(images, mask, method="softimpute", differentiable=True)  # exact jax.grad
rec = tv_minimize(images, mask)                    # Guo et al.'s TV minimisation

Modules: `masks` (masks and p schedules), `solvers` (USVT, Soft-Impute, nuclear norm), `linalg`
(the solvers' batched spectral kernels), `methods` (the registry of methods, name -> solver,
options and gradient; docs/method.md §2.8), `reconstruct` (images <-> matrices, the
reconstruction by a registered method), `gradients` (the exact gradients in the image for a fixed
mask behind `differentiable=True`, docs/method.md §5.6), `tvm` (Guo et al.'s total variation
minimisation, docs/method.md §2.7). Their speed is measured by `python -m menet_jax.bench me` and
`... grad`.
"""

from menet_jax.me.masks import CHANNEL_MODES, p_schedule, sample_mask
from menet_jax.me.reconstruct import (
    images_to_matrices,
    mask_and_reconstruct,
    matrices_to_images,
    reconstruct,
)
from menet_jax.me.solvers import (
    neighbour_fill,
    nucnorm,
    nucnorm_objective,
    observed_fraction,
    softimpute,
    usvt,
)
from menet_jax.me.tvm import check_tvm_options, tv_minimize

__all__ = [
    "CHANNEL_MODES",
    "check_tvm_options",
    "images_to_matrices",
    "mask_and_reconstruct",
    "matrices_to_images",
    "neighbour_fill",
    "nucnorm",
    "nucnorm_objective",
    "observed_fraction",
    "p_schedule",
    "reconstruct",
    "sample_mask",
    "softimpute",
    "tv_minimize",
    "usvt",
]
