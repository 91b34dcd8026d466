"""Shared fixtures: the real MNIST (fetched once, verified) and a helper that runs train.py in-process."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import train  # noqa: E402

DATA = os.path.join(ROOT, "data")


@pytest.fixture(scope="session")
def mnist():
    """(train_x, train_y, test_x, test_y) as uint8, verified against the pinned hashes."""
    return data.load_mnist(DATA)


@pytest.fixture
def run_train(tmp_path):
    """Run `train.py ARGS` in-process on a small real slice; returns (exit code, parsed JSON or None).

    Eager by default: torch.compile costs 10-30 s per process the first time, and what a test checks (the
    loop, the files, the refusals) is the same either way; compiled=True takes the default compiled path."""
    def run(*args, out=None, name="none", compiled=False):
        out = str(out or tmp_path)
        argv = ["--data", DATA, "--out", out, "--train-limit", "640", "--test-limit", "320", "--device", "cpu",
                *([] if compiled else ["--no-compile"]), *args]
        code = train.main(argv)
        path = os.path.join(out, f"{name}.json")
        return code, (json.load(open(path)) if os.path.exists(path) else None)
    return run


def checkpoint(run):
    """The path of a run's checkpoint: the JSON names it relative to the repository root."""
    return os.path.join(ROOT, run["checkpoint"])
