"""menet-jax: ME-Net (Yang et al., ICML 2019) in JAX/Flax.

Subpackages: `me` (masks and matrix-estimation solvers), `models`, `attacks`, `bench`
(benchmarks), `figures` (the paper's figures); modules `input_pipeline`, `train`, `defense`,
`checkpoint`, `evaluate`, `main`.
"""

__version__ = "0.1.0"
