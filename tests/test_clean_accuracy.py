"""Clean accuracy after training (`menet_jax.clean_accuracy`) against a numpy count."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from menet_jax import clean_accuracy


def _classifier(method: str, w: np.ndarray):
    """A stand-in with the three things evaluate_clean reads: a linear network, and a "defended"
    one that adds noise drawn from its key (so the keys per batch matter)."""
    config = ml_collections.ConfigDict({"me": {"method": method}})

    def network(x):
        return x.reshape(x.shape[0], -1) @ jnp.asarray(w)

    def defended(x, key):
        return network(x) + 0.3 * jax.random.normal(key, (x.shape[0], w.shape[1]))

    return types.SimpleNamespace(config=config, network=network, defended=defended)


def test_clean_accuracy_counts_what_numpy_counts():
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, size=(23, 4, 4, 1)).astype(np.uint8)
    labels = rs.randint(0, 3, size=23).astype(np.int32)
    w = rs.randn(16, 3).astype(np.float32)
    key, batch = jax.random.key(7), 8  # 23 = 8 + 8 + 7: the last batch is padded
    out = clean_accuracy.evaluate_clean(
        _classifier("usvt", w), images, labels, batch_size=batch, key=key
    )
    x = images.reshape(23, -1).astype(np.float64) / 255.0
    network = np.mean(np.argmax(x @ w.astype(np.float64), -1) == labels)
    draws = [jax.random.normal(jax.random.fold_in(key, b), (batch, 3)) for b in range(3)]
    noise = np.concatenate([np.asarray(d) for d in draws])[:23]  # batch b's key: fold_in(key, b)
    menet = np.mean(np.argmax(x @ w + 0.3 * noise, -1) == labels)
    assert out["network_accuracy"] == network
    assert out["menet_accuracy"] == menet == out["clean_accuracy"]
    vanilla = clean_accuracy.evaluate_clean(
        _classifier("none", w), images, labels, batch_size=batch, key=key
    )
    assert set(vanilla) == {"network_accuracy", "clean_accuracy"}
    assert vanilla["clean_accuracy"] == network


def test_eval_split_takes_the_first_num_eval_examples():
    images, labels = np.arange(10)[:, None], np.arange(10) % 3
    c = ml_collections.ConfigDict({"num_eval_examples": 4})
    x, y = clean_accuracy.eval_split(c, images, labels)
    np.testing.assert_array_equal(x, images[:4])
    np.testing.assert_array_equal(y, labels[:4])
    c.num_eval_examples = None
    assert len(clean_accuracy.eval_split(c, images, labels)[0]) == 10
