"""Label smoothing (config.label_smoothing) against the formula in numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from lmsgd.step import cross_entropy, training_loss


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_training_loss_is_cross_entropy_against_smoothed_labels(alpha):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, size=6)
    log_p = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    targets = np.full((6, 10), alpha / 10) + (1 - alpha) * np.eye(10)[labels]
    expected = -np.sum(targets * log_p, axis=1)
    got = training_loss(jnp.asarray(logits), jnp.asarray(labels), alpha)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
    if alpha == 0.0:  # evaluation's plain cross-entropy
        np.testing.assert_allclose(np.asarray(cross_entropy(logits, labels)), expected, rtol=1e-5)
