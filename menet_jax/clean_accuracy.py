"""Clean accuracy after training: the bare network and ME-Net inference on the test split.

`menet_jax.train.train_and_evaluate` reports it in WORKDIR/summary.json, as flax's examples end
training with an evaluation step. The attack suite, with its own clean row, is
`menet_jax.evaluation`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax import defense, input_pipeline, monitor


def evaluate_clean(
    classifier: defense.DefendedClassifier,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    key: jax.Array,
    config=None,
) -> dict:
    """Accuracy of the bare network and of ME-Net inference on uint8 images.

    Each batch b uses the key fold_in(key, b) for its masks.
    """
    use_me = classifier.config.me.method != "none"

    @jax.jit
    def batch_correct(x_u8, y, valid, k):
        x = input_pipeline.to_float(x_u8)
        out = {"network": classifier.network(x)}
        if use_me:
            out["menet"] = classifier.defended(x, k)
        return {name: jnp.sum((jnp.argmax(v, -1) == y) * valid) for name, v in out.items()}

    totals: dict[str, int] = {}
    num = len(images)
    bar = monitor.progress(total=num, desc="evaluating", unit="img", config=config)
    for b, start in enumerate(range(0, num, batch_size)):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        valid = (np.arange(batch_size) < len(y)).astype(np.float32)
        x, y = input_pipeline.pad_batch(x, batch_size), input_pipeline.pad_batch(y, batch_size)
        res = batch_correct(x, y.astype(np.int32), valid, jax.random.fold_in(key, b))
        for name, v in res.items():
            totals[name] = totals.get(name, 0) + int(v)
        bar.update(min(batch_size, num - start))
    bar.close()
    out = {f"{name}_accuracy": totals[name] / num for name in totals}
    out["clean_accuracy"] = out.get("menet_accuracy", out["network_accuracy"])
    return out


def eval_split(config, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first `config.num_eval_examples` test images and labels (all when it is None)."""
    n = len(images) if config.num_eval_examples is None else config.num_eval_examples
    return images[:n], labels[:n]
