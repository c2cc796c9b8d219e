"""Settings every test shares.

On GPUs jax computes float32 matrix products and convolutions in TF32 by default (a 10-bit
mantissa, ~1e-4 relative error); the tests compare with float64 references at float32
tolerances, so they ask for full float32 precision. On the CPU, where CI runs, float32 is already
what XLA computes, so this changes nothing there.

XLA:CPU compiles the tests' programs with LLVM's optimisations off
(`--xla_backend_optimization_level=0`): the tests' configs are tiny, so compiling is most of
their time, and unoptimised code computes the same operations (about 40% off a compile-bound
test). Subprocesses inherit it; those that force host devices add their flag to it. Benchmarks
and users' runs keep XLA's default.

The test files run on several pytest-xdist workers at once (pyproject's addopts); on a GPU each
worker's jax allocates memory as it needs it instead of taking 75% of the device up front.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
