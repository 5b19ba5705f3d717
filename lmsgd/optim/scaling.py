"""One rule to shorten the paper's 90-epoch recipe: every epoch-valued setting scales alike."""

from __future__ import annotations

import copy

import ml_collections

PAPER_EPOCHS = 90.0
# Settings of `config.optimizer` measured in epochs.
EPOCH_KEYS = ("beta_center", "beta_period", "warmup_epochs")
EPOCH_SEQUENCE_KEYS = ("slow_start_boundaries", "goyal_boundaries")


def scale_epochs(
    optimizer: ml_collections.ConfigDict, num_epochs: float, reference_epochs: float = PAPER_EPOCHS
) -> ml_collections.ConfigDict:
    """Returns a copy of `optimizer` with every epoch-valued setting x num_epochs / 90.

    The rule: a run of E epochs places each event (RMSprop-to-SGD hand-over, learning-rate
    drops, warm-up end) at the same *fraction* of training as the paper's 90-epoch run. E.g.
    at 30 epochs the hand-over is centred on epoch 3.33 and the slow-start drops come at
    13.3 / 23.3 / 28.3.
    """
    factor = float(num_epochs) / float(reference_epochs)
    # A deep copy keeps typed placeholders (e.g. base_learning_rate=None, settable from the
    # command line); rebuilding from to_dict() would turn them into untyped None.
    out = copy.deepcopy(optimizer)
    for key in EPOCH_KEYS:
        out[key] = float(optimizer[key]) * factor
    for key in EPOCH_SEQUENCE_KEYS:
        out[key] = tuple(float(b) * factor for b in optimizer[key])
    return out
