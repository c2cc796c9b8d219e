"""Small real-photo test images from scikit-image (shipped with the package, no download)."""

import numpy as np

# Colour photographs bundled with scikit-image (no network needed).
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "cat")


def load_photo(name: str, *, size: int = 32) -> np.ndarray:
    """One skimage.data photo, centre-cropped to a square and resized to size x size, in [0,1]."""
    import skimage.data
    import skimage.transform

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
