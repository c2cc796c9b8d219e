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
    for name in ("run", "train", "eval", "study", "bench", "fig9"):
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
    ],
)  # fmt: skip
def test_subcommand_equals_python_dash_m(script, sub, module):
    a = _run([script, *sub])
    b = _run([sys.executable, "-m", *module])
    assert (a.returncode, a.stdout) == (b.returncode, b.stdout)
    assert a.stderr.strip().splitlines()[-1:] == b.stderr.strip().splitlines()[-1:]
    assert a.stdout or a.stderr  # each printed something: the comparison is not of two silences
