"""The benchmarks' frame (`make bench`): the repository on the import path and MNIST loaded once, as tests/ has."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402

DATA = os.path.join(ROOT, "data")


@pytest.fixture(scope="session")
def mnist():
    """(train_x, train_y, test_x, test_y) as uint8, verified against the pinned hashes."""
    return data.load_mnist(DATA)
