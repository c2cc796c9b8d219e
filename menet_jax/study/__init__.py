r"""The supplement's studies and figures, one command each (docs/method.md §8).

  python -m menet_jax.study NAME --config=configs/mnist_demo.py --workdir=DIR [--config.KEY=V]
  python -m menet_jax.study --list

  from menet_jax.study import run_study
  table = run_study("p_tradeoff", load_config("configs/mnist_demo.py"), "/tmp/studies")

Modules: `core` (the declarations `Study` / `Point` / `Column` / `Quoted`, the registry, the
model cache, resumable points), `run` (`run_study`), `output` (DIR/NAME.md, .json, .png from
the points' results.json), `studies` (eps, p_tradeoff, me_methods, restarts, vote, num_masks,
defences, noise), `noise` (Fig. 10's picture). Models are cached in DIR/models by their
training config, so studies run in one DIR share them.
"""

from menet_jax.study import studies as _studies  # noqa: F401  (registers the studies)
from menet_jax.study.core import (
    STUDIES,
    Bars,
    Column,
    Lines,
    Point,
    Quoted,
    Study,
    get_study,
    model_hash,
    register,
)
from menet_jax.study.run import run_study

__all__ = [
    "STUDIES", "Bars", "Column", "Lines", "Point", "Quoted", "Study", "get_study", "model_hash",
    "register", "run_study",
]  # fmt: skip
