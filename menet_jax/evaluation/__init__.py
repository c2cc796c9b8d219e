"""The evaluation: the attack suite on a trained run, its statistics, checks and report.

  report = menet_jax.evaluation.evaluate(config, workdir)   # results.json / .md / .npz, PNGs
  report = menet_jax.evaluation.evaluate_model(logits_fn, x, y, workdir=OUT)  # any JAX model

Modules: `rows` (each kind of row defined once: its config section, threat model, needs, whether
it counts, its role in the checks), `settings` (the `eval` config: common keys, sections, checks),
`target` (the evaluated classifier's logits functions and judges), `suite` (the loop that runs
the rows, resumably), `protocol` (single-mask rates, the vote, the headline), `stats` (binomial
statistics), `sanity` (the report's sanity checks), `report` (results.json / .md / .npz),
`plots` (PNGs of results.json and their TensorBoard log), `autoattack` (AutoAttack's 'rand'
protocol with its own judging, its figure beside the headline, its state file), `crosscheck` (an
independent adaptive attack against a finished evaluation), `user_model` (the suite on a user's
logits function and preprocessing). The protocol is docs/method.md §5-6.
"""

from menet_jax.evaluation.suite import evaluate
from menet_jax.evaluation.user_model import InputError, evaluate_model

__all__ = ["InputError", "evaluate", "evaluate_model"]
