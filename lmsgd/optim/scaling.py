"""One rule to shorten the paper's 90-epoch recipe: every epoch-valued setting scales alike."""

from __future__ import annotations

import copy

import ml_collections

from lmsgd.optim import registry

PAPER_EPOCHS = 90.0


def epoch_keys() -> list[tuple[str, str]]:
    """``(sub-section, key)`` of every setting of ``config.optimizer`` measured in epochs, as
    each recipe declares them (e.g. ``('rmsprop_warmup', 'beta_center')``)."""
    return [(n, k) for n, r in registry.sections().items() for k in r.epoch_keys]


def scale_epochs(
    optimizer: ml_collections.ConfigDict, num_epochs: float, reference_epochs: float = PAPER_EPOCHS
) -> ml_collections.ConfigDict:
    """Returns a copy of `optimizer` with every epoch-valued setting x num_epochs / 90.

    The rule: a run of E epochs places each event (RMSprop-to-SGD hand-over, learning-rate
    drops, warm-up end) at the same *fraction* of training as the paper's 90-epoch run. E.g.
    at 30 epochs the hand-over is centred on epoch 3.33 and the slow-start drops come at
    13.3 / 23.3 / 28.3. Every recipe's section is scaled, not only the ones named, so that
    switching `name` or `schedule` afterwards (e.g. on the command line) stays consistent.

    >>> from lmsgd.optim import default_optimizer_config
    >>> short = scale_epochs(default_optimizer_config(), 30.0)
    >>> round(short.rmsprop_warmup.beta_center, 2)
    3.33
    >>> [round(b, 1) for b in short.slow_start.boundaries]
    [13.3, 23.3, 28.3]
    """
    factor = float(num_epochs) / float(reference_epochs)
    # A deep copy keeps typed placeholders (e.g. base_learning_rate=None, settable from the
    # command line); rebuilding from to_dict() would turn them into untyped None.
    out = copy.deepcopy(optimizer)
    for section, key in epoch_keys():
        value = optimizer[section][key]
        if isinstance(value, (tuple, list)):
            out[section][key] = tuple(float(b) * factor for b in value)
        else:
            out[section][key] = float(value) * factor
    return out
