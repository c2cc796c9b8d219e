"""The `menet-jax` console script: installed by `pip install -e .`, each subcommand behaves as its
`python -m` module (same output, same exit code), and a bad subcommand is one line and exit 1."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "menet-jax")


def _run(cmd, timeout=180):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def script():
    assert os.path.exists(SCRIPT), "the console script is missing: pip install -e . installs it"
    return SCRIPT


def test_help_lists_the_subcommands(script):
    out = _run([script, "--help"])
    assert out.returncode == 0
    for name in ("run", "train", "eval", "study", "bench", "fig9", "crosscheck"):
        assert f"\n  {name} " in out.stdout


def test_unknown_subcommand_is_one_line_and_exit_1(script):
    out = _run([script, "trian"])
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("error: unknown subcommand 'trian'")
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("sub", "module"),
    [
        (["eval", "--config=configs/mnist_demo.py", "--workdir=/nonexistent/menet"],
         ["menet_jax.main", "--mode=eval", "--config=configs/mnist_demo.py",
          "--workdir=/nonexistent/menet"]),
        (["study", "--list"], ["menet_jax.study", "--list"]),
        (["bench", "eval", "--examples", "0"], ["menet_jax.bench", "eval", "--examples", "0"]),
        (["crosscheck", "--workdir=/nonexistent/menet"],
         ["menet_jax.evaluation.crosscheck", "--workdir=/nonexistent/menet"]),
    ],
)  # fmt: skip
def test_subcommand_equals_python_dash_m(script, sub, module):
    a = _run([script, *sub])
    b = _run([sys.executable, "-m", *module])
    assert (a.returncode, a.stdout) == (b.returncode, b.stdout)
    assert a.stderr.strip().splitlines()[-1:] == b.stderr.strip().splitlines()[-1:]
    assert a.stdout or a.stderr  # each printed something: the comparison is not of two silences


ENTRY_POINTS = {
    "main": ["menet_jax.main", "--workdir=/nonexistent/menet"],
    "study": ["menet_jax.study", "p_tradeoff", "--workdir=/nonexistent/menet"],
    "convert": ["menet_jax.convert", "--torch=/nonexistent/x.ckpt", "--workdir=/nonexistent/w"],
    "bench train": ["menet_jax.bench", "train"],
    "bench eval": ["menet_jax.bench", "eval"],
}


def _config_arg(entry: str, spec: str) -> list[str]:
    """--config as two arguments for bench (a plain absl string flag, which takes `--config X`
    as well as `--config=X`), or one with an override after it where the entry point takes
    overrides (the override must not hide the load error)."""
    if entry.startswith("bench"):
        return ["--config", spec]
    return [f"--config={spec}", "--config.seed=3"]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("configs/nope.py", "error: config file 'configs/nope.py' does not exist\n"),
        ("configs/cifar10.py:nosuch", "error: unknown config variant 'nosuch'; allowed: adv, "),
        ("{tmp}/broken.py", "error: config file '{tmp}/broken.py' could not be run: SyntaxError"),
    ],
    ids=["missing", "variant", "syntax"],
)  # fmt: skip
def test_a_config_file_that_cannot_be_loaded_is_one_line_and_exit_1(entry, spec, message, tmp_path):
    (tmp_path / "broken.py").write_text("def get_config(:\n    pass\n")
    spec, message = spec.format(tmp=tmp_path), message.format(tmp=tmp_path)
    module, *rest = ENTRY_POINTS[entry]
    out = _run([sys.executable, "-m", module, *rest, *_config_arg(entry, spec)])
    assert (out.returncode, out.stdout) == (1, ""), out.stderr[-2000:]
    assert out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr[-2000:]


def test_options_parse_with_absl_into_flags_of_their_own():
    from menet_jax.cli import Options, UsageError

    def options():
        return (
            Options("prog", "doc")
            .define("integer", "num-images", 4, "images")
            .define("float", "p", 0.5, "p")
            .define("boolean", "no-baselines", False, "skip")
            .define("enum", "channels", "concat", "how", enum_values=["concat", "separate"])
        )

    opts = options()
    args = opts.parse(["--num-images", "7", "--p=0.25", "--no-baselines"])
    assert vars(args) == {"num_images": 7, "p": 0.25, "no_baselines": True, "channels": "concat"}
    assert vars(opts.parse([]))["num_images"] == 4  # a second parse starts from the defaults
    assert options().parse(["--channels=separate"]).channels == "separate"  # no shared state
    for argv, named in [
        (["--unknown"], "unknown option --unknown"),
        (["--num-images", "x"], "'x'"),
        (["--channels=rgb"], "rgb"),
        (["extra"], "unrecognized arguments: extra"),
    ]:
        with pytest.raises(UsageError, match=named) as e:
            opts.parse(argv)
        assert "\n" not in str(e.value)
