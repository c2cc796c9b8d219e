"""Figures of the paper, redrawn from this code, and the photos they are drawn on.

  python -m menet_jax.figures.fig9 --out fig9.png   # Fig. 9: masked photos rebuilt by ME

`photos` holds the scikit-image photographs (whole, or as CIFAR-sized tiles) and the PSNR that
scores a reconstruction; the ME benchmark measures on the same tiles.
"""
