"""Smoke tests of the ME benchmark (tiny sizes)."""

import re

from menet_jax.me import benchmark


def _values(text):
    return dict(re.findall(r"^(\S+): (\S+)$", text, flags=re.M))


def test_benchmark_prints_name_value_lines(capsys):
    argv = ["--num-images", "6", "--batch", "4", "--baseline-images", "3", "--fancy-images", "2"]
    argv += ["--cvxpy-images", "0", "--solvers", "usvt,softimpute_acc", "--workers", "2"]
    assert benchmark.main(argv) == 0
    vals = _values(capsys.readouterr().out)
    assert float(vals["jax_usvt_img_per_s"]) > 0
    assert float(vals["jax_softimpute_acc_psnr"]) > float(vals["psnr_zero_fill"])
    assert float(vals["numpy_usvt_img_per_s"]) > 0
    assert "jax_usvt_speedup_vs_numpy" in vals
    # Two processes, each solving half of the same matrices, give the same reconstructions.
    assert float(vals["jax_softimpute_acc_img_per_s_2procs"]) > 0
    assert float(vals["numpy_usvt_img_per_s_2procs"]) > 0  # fancyimpute: only in [bench]
    two, one = float(vals["jax_softimpute_acc_psnr_2procs"]), float(vals["jax_softimpute_acc_psnr"])
    assert abs(two - one) < 0.01
    assert "jax_usvt_speedup_vs_numpy_machine" in vals

