"""Tests of menet_jax.figures: the photos, the PSNR and the Fig. 9 script (tiny sizes)."""

import re

import numpy as np
import pytest

from menet_jax.figures import fig9, photos


def _values(text):
    return dict(re.findall(r"^(\S+): (\S+)$", text, flags=re.M))


def test_psnr_against_closed_form():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (3, 4, 5, 2))
    # A uniform error e gives MSE e^2, so 10 log10(1 / e^2) dB in every slice.
    assert photos.psnr(x + 0.1, x) == pytest.approx(20.0)
    # Per image: errors 0.1, 0.01 and 0 (capped at MSE 1e-12) average to (20 + 40 + 120) / 3.
    y = x + np.array([0.1, 0.01, 0.0])[:, None, None, None]
    assert photos.psnr(y, x) == pytest.approx(60.0)
    # Per row of each image: two rows with error 0.1, two with 0.01, averaged over rows.
    z = x + np.array([0.1, 0.1, 0.01, 0.01])[None, :, None, None]
    assert photos.psnr(z, x, axis=(-2, -1)) == pytest.approx(30.0)
    assert photos.psnr(z, x) == pytest.approx(10 * np.log10(1 / ((0.01 + 0.0001) / 2)))


def test_photo_tiles_are_crops_of_the_photos():
    tiles = photos.photo_tiles(3, size=8, scale=16, seed=1)
    assert tiles.shape == (3, 8, 8, 3) and tiles.dtype == np.float32
    whole = [photos.load_photo(n, size=16) for n in photos.PHOTO_NAMES]
    for t in tiles:
        assert any(
            np.array_equal(t, w[r : r + 8, c : c + 8])
            for w in whole
            for r in range(9)
            for c in range(9)
        )
    with pytest.raises(ValueError, match="name must be one of"):
        photos.load_photo("lena")


def test_fig9_writes_png(tmp_path, capsys):
    out = tmp_path / "fig9.png"
    argv = ["--out", str(out), "--size", "16", "--p", "0.5", "--images", "astronaut,coffee"]
    assert fig9.main(argv + ["--methods", "usvt,softimpute"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vals = _values(capsys.readouterr().out)
    assert float(vals["psnr_softimpute_p0.5"]) > float(vals["psnr_grey_fill_p0.5"])
    assert fig9.main(["--out", str(out), "--p", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("error: p must be in (0, 1]")
    for bad in (["--channels", "rgb"], ["--size=x"], ["--nope"]):  # options: one line, exit 2
        assert fig9.main(bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
