"""Settings every test shares.

On GPUs jax computes float32 matrix products and convolutions in TF32 by default (a 10-bit
mantissa, ~1e-4 relative error); the tests compare with float64 references at float32
tolerances, so they ask for full float32 precision. On the CPU, where CI runs, float32 is already
what XLA computes, so this changes nothing there.
"""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
