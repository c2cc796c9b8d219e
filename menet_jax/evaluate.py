"""Evaluation of a trained workdir: clean accuracy through ME-Net (attack suite: issue 4)."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from menet_jax import checkpoint, input_pipeline, train


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Restores WORKDIR's checkpoint and writes WORKDIR/results.json and results.md."""
    classifier = checkpoint.load(workdir)
    run_config = classifier.config
    images, labels = input_pipeline.load_split(
        run_config.dataset, "test", data_dir=run_config.data_dir or None
    )
    n = len(labels) if config.eval.num_examples < 0 else min(config.eval.num_examples, len(labels))
    key = jax.random.fold_in(jax.random.key(run_config.seed), train.STREAM_EVAL + 1)
    clean = train.evaluate_clean(
        classifier,
        images[:n],
        labels[:n],
        batch_size=config.eval_batch_size,
        key=key,
        config=config,
    )
    report = {
        "clean": {
            "accuracy": clean["clean_accuracy"],
            "network_accuracy": clean["network_accuracy"],
        },
        "attacks": {},
        "worst_case": {"accuracy": clean["clean_accuracy"]},
        "checks": {},
        "budgets": {"num_examples": n},
        "step": classifier.step,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(f"| clean | {report['clean']['accuracy']:.2%} |\n")
    return report
