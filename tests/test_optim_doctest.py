"""The docstring examples of lmsgd.optim run, and print what they say."""

import doctest
import importlib

import pytest

# Modules with examples; each must have at least one, so an example cannot silently vanish.
MODULES = (
    "lmsgd.optim.rmsprop_warmup",
    "lmsgd.optim.registry",
    "lmsgd.optim.config",
    "lmsgd.optim.factory",
    "lmsgd.optim.scaling",
    "lmsgd.optim.schedules",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
