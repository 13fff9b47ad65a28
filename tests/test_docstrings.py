"""The examples in public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["jaxsecond.implicit._root", "jaxsecond.implicit._linear_solve"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
