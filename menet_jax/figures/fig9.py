"""A Fig. 9-like picture: photos masked at several p and rebuilt by each ME method.

  python -m menet_jax.figures.fig9 --out fig9.png [--size 32] [--p 0.3,0.5,0.7]

Rows are real photographs shipped with scikit-image; columns are the original, then for each p
the masked image (missing entries black) and the reconstruction by each method. Prints the mean
reconstruction PSNR of each method at each p as `name: value` lines.
"""

import sys

import jax
import numpy as np

from menet_jax import cli
from menet_jax.figures import photos
from menet_jax.figures.photos import psnr
from menet_jax.me import masks
from menet_jax.me.reconstruct import reconstruct

DEFAULT_METHODS = ("usvt", "softimpute", "nucnorm")


def make_grid(images, ps, methods, *, seed=0, channels="concat"):
    """Returns (columns, titles, psnrs): columns a list of [N, H, W, C] arrays."""
    cols, titles, scores = [images], ["original"], {}
    for i, p in enumerate(ps):
        key = jax.random.fold_in(jax.random.key(seed), i)
        mask = masks.sample_mask(key, images.shape, p, channels=channels)
        cols.append(np.asarray(images * mask))
        titles.append(f"masked p={p:g}")
        for method in methods:
            rec = np.asarray(reconstruct(images, mask, method=method, channels=channels))
            cols.append(rec)
            titles.append(f"{method} p={p:g}")
            scores[f"psnr_{method}_p{p:g}"] = psnr(rec, images)
        # ME's own starting point: missing entries at mid-grey (0 in [-1, 1]).
        grey = np.asarray(images * mask + 0.5 * (1 - mask))
        scores[f"psnr_grey_fill_p{p:g}"] = psnr(grey, images)
    return cols, titles, scores


def save_grid(path: str, cols, titles, row_names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = cols[0].shape[0], len(cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.3 * n_cols, 1.4 * n_rows + 0.4), squeeze=False
    )
    for c, (col, title) in enumerate(zip(cols, titles, strict=True)):
        for r in range(n_rows):
            ax = axes[r, c]
            ax.imshow(np.clip(col[r], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
            if c == 0:
                ax.set_ylabel(row_names[r], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _options() -> cli.Options:
    return (
        cli.Options("python -m menet_jax.figures.fig9", __doc__)
        .define("string", "out", "fig9.png", "output PNG path")
        .define("integer", "size", 32, "image side (32 = CIFAR)")
        .define("string", "p", "0.3,0.5,0.7", "comma-separated observation probabilities")
        .define("string", "methods", ",".join(DEFAULT_METHODS), "comma-separated")
        .define("string", "images", "astronaut,chelsea,coffee,rocket", "skimage.data names")
        .define("enum", "channels", "concat", "", enum_values=list(masks.CHANNEL_MODES))
        .define("integer", "seed", 0, "the masks' seed")
    )


def main(argv: list[str]) -> int:
    try:
        args = _options().parse(argv)
        ps = [float(v) for v in args.p.split(",") if v]
        for p in ps:
            masks.check_p(p)
        names = [n for n in args.images.split(",") if n]
        methods = [m for m in args.methods.split(",") if m]
        if args.size < 4:
            raise ValueError(f"--size must be >= 4; got {args.size}.")
        images = np.stack([photos.load_photo(n, size=args.size) for n in names])
        cols, titles, scores = make_grid(
            images, ps, methods, seed=args.seed, channels=args.channels
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_grid(args.out, cols, titles, names)
    for k, v in scores.items():
        print(f"{k}: {v:.2f}")
    print(f"wrote: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
