"""The docstring examples of the public API run and print what they claim."""
import doctest

import softrank._api


def test_api_docstring_examples():
    failures, attempted = doctest.testmod(softrank._api, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted >= 5
    assert failures == 0
