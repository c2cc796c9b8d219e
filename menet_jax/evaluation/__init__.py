"""The evaluation: the attack suite on a trained run, its statistics, checks and report.

  report = menet_jax.evaluation.evaluate(config, workdir)   # results.json / results.md

Modules: `suite` (the rows and the loop that runs them), `protocol` (single-mask rates, the vote,
the headline), `settings` (the row groups and the checks of the `eval` config keys), `stats`
(binomial statistics), `checks` (sanity checks), `report` (results.json / .md / .npz),
`crosscheck` (an independent adaptive attack against a finished evaluation), `figures` (PNGs of
results.json and their TensorBoard log). The protocol is docs/method.md §5-6.
"""

from menet_jax.evaluation.suite import evaluate

__all__ = ["evaluate"]
