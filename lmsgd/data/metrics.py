"""Masked top-k counts for exact evaluation (padded examples carry mask 0)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def masked_topk_correct(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, ks: Sequence[int] = (1, 5)
) -> dict[str, jax.Array]:
    """Sums of correct predictions over real examples.

    Args:
      logits: [B, num_classes] scores (any float dtype).
      labels: [B] int class ids.
      mask: [B] 1 (or True) for real examples, 0 for padding.
      ks: which top-k accuracies to count; k larger than num_classes counts as num_classes.

    Returns:
      {'top1': sum, 'top5': sum, ..., 'count': number of real examples}, float32 scalars.
      Divide the sums (accumulated over all eval batches) by the summed 'count'.
    """
    mask = mask.astype(jnp.float32)
    num_classes = logits.shape[-1]
    kmax = min(max(ks), num_classes)
    # top_k ranks ties by index, like argmax; computed once for the largest k.
    _, top = jax.lax.top_k(logits.astype(jnp.float32), kmax)
    hit = top == labels[:, None].astype(top.dtype)  # [B, kmax], at most one True per row
    out = {}
    for k in ks:
        correct = jnp.any(hit[:, : min(k, num_classes)], axis=-1).astype(jnp.float32)
        out[f"top{k}"] = jnp.sum(correct * mask)
    out["count"] = jnp.sum(mask)
    return out
