"""Real photographs for figures and benchmarks, and the PSNR that scores reconstructions of them.

The photos are the colour images bundled with scikit-image (no download). `load_photo` gives one
as a small square image, `photo_tiles` random CIFAR-sized crops of them (the ME benchmark's and
the ME tests' inputs), `psnr` how close a reconstruction is to the original.
"""

from collections.abc import Sequence

import numpy as np

# Colour photographs bundled with scikit-image (no network needed).
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "cat")


def load_photo(name: str, *, size: int = 32) -> np.ndarray:
    """One skimage.data photo, centre-cropped to a square and resized to size x size, in [0,1]."""
    try:
        import skimage.data
        import skimage.transform
    except ImportError:
        raise ValueError(
            "the sample photos need scikit-image, which is not installed: "
            "pip install 'menet-jax[demo]' (or pip install scikit-image)"
        ) from None

    if name not in PHOTO_NAMES:
        raise ValueError(f"name must be one of {PHOTO_NAMES}; got {name!r}.")
    img = getattr(skimage.data, name)()[..., :3]
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    out = skimage.transform.resize(img, (size, size), anti_aliasing=True)
    return out.astype(np.float32)


def photo_tiles(num: int, *, size: int = 32, scale: int = 128, seed: int = 0) -> np.ndarray:
    """num random size x size crops of skimage.data photos resized to scale x scale, [N,H,W,3].

    At scale = 128 a 32x32 crop shows about a quarter of the photo: CIFAR-like content and
    statistics, from real images rather than noise.
    """
    rng = np.random.default_rng(seed)
    photos = [load_photo(n, size=scale) for n in PHOTO_NAMES]
    out = np.empty((num, size, size, 3), np.float32)
    for i in range(num):
        ph = photos[rng.integers(len(photos))]
        r, c = rng.integers(0, scale - size + 1, size=2)
        out[i] = ph[r : r + size, c : c + size]
    return out


def psnr(x: np.ndarray, y: np.ndarray, *, axis: Sequence[int] = (-3, -2, -1)) -> float:
    """Mean PSNR (dB) between arrays with values in [0, 1].

    Args:
      x, y: same-shape arrays, e.g. images [N, H, W, C].
      axis: the axes one PSNR is measured over (10 log10(1 / MSE)); the PSNRs of all the
        slices along the remaining axes are averaged. The default, one PSNR per image, is what
        the Fig. 9 script prints. `python -m menet_jax.bench me` passes (-2, -1), one PSNR per
        image row averaged over rows and images, the measure its recorded figures use.

    Returns:
      The mean PSNR (an MSE below 1e-12 counts as 1e-12, i.e. 120 dB).
    """
    diff = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    mse = np.mean(diff**2, axis=tuple(axis))
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))
