"""The docstring examples of lmsgd.optim run, and print what they say."""

import doctest
import importlib
import pathlib

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


def test_the_optimizer_page_examples():
    """docs/optimizer.md: using rmsprop_warmup in your own optax code, as written there."""
    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "optimizer.md"
    result = doctest.testfile(
        str(page),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted >= 10
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
