"""The docstring examples of the public API run and print what they claim."""
import doctest
import pydoc

import pytest

import softrank
import softrank._api

PUBLIC = [name for name in softrank.__all__ if name != "__version__"]


def test_api_docstring_examples():
    failures, attempted = doctest.testmod(softrank._api, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted >= 5
    assert failures == 0


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_function_has_running_examples(name):
    obj = getattr(softrank, name)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    examples = sum(len(t.examples) for t in tests)
    assert examples >= 2, f"softrank.{name} has no Examples section"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"softrank.{name}: {runner.failures} failing example(s)"


def test_spearman_loss_help_shows_its_own_documentation():
    text = pydoc.render_doc(softrank.SpearmanLoss, renderer=pydoc.plaintext)
    assert "Returns" in text
    forward = pydoc.render_doc(softrank.SpearmanLoss.forward, renderer=pydoc.plaintext)
    assert "1 - softrank.spearmanr(pred, target" in forward
    assert "Define the computation performed at every call" not in forward  # torch's text
