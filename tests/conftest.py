"""Shared fixtures.  Deliberately minimal: no global seeding."""

import os
import sys
import zlib

import numpy as np
import pytest

# tests/_reference.py and tests/_helpers.py stay importable under any --import-mode.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


@pytest.fixture
def rng(request):
    """A NumPy Generator seeded from the test's node id: reproducible per test, and
    independent of test order and of which other tests run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
