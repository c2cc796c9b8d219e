"""Benchmarks: how fast ME, training and attacks run here, printed as `name: value` lines.

  python -m menet_jax.bench me       # ME solvers vs the authors' one-image-at-a-time code
  python -m menet_jax.bench train --config=configs/mnist_demo.py   # the jitted train step
  python -m menet_jax.bench attack   # BPDA-PGD through online USVT
  python -m menet_jax.bench grad     # exact gradients through ME vs BPDA

`me`, `train`, `attack` and `grad` are one module each (`main(argv) -> exit code`);
`baselines` holds the authors' per-image solvers `me` compares with; `common` the conventions
all share: one `name: value` line per result on stdout, one `error: ...` line on stderr and
exit code 2 for a bad option, and the timing and device helpers. BENCHMARKS.md records the
figures.
"""
