"""menet-jax: ME-Net (Yang et al., ICML 2019) in JAX/Flax.

Subpackages: `me` (masks and matrix-estimation solvers), `models`, `attacks`, `evaluation` (the
attack suite, its statistics, checks and report), `bench` (benchmarks), `figures` (the paper's
figures). Modules: `config` (the config schema), `rng` (random streams), `input_pipeline`,
`sprime` (the reconstructed training set), `recipe` (model, optimizer, schedule, step counts),
`train`, `adversarial` (adversarial training's examples), `clean_accuracy`, `defense` (the
defended classifier), `checkpoint`, `monitor` (progress bars and metrics), `main` (command line).
The method they implement is docs/method.md.
"""

__version__ = "0.1.0"
