"""The CUDA path, run only where torch sees a GPU (skipped by CI's CPU machine): the same command twice gives the
same numbers, packed models are the models trained alone, and a killed run resumes exactly, all on the GPU."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import DATA, FP32, TRAIN_PY, checkpoint, metrics
from test_packed import ARGS as FLOAT64_ARGS
from test_resume import resume_equals_uninterrupted

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
SLICE = ["--train-limit", "2000", "--test-limit", "1000", "--device", DEVICE, "--data", DATA]


def test_same_command_same_numbers_on_cuda(tmp_path):
    """The default (compiled, bf16) path, one epoch on 2,000 images, run twice as a program: identical metrics and
    checkpoint bytes; it learns; the JSON names the card."""
    for d in ("a", "b"):
        r = subprocess.run([sys.executable, TRAIN_PY, "--variant", "l1l2", "--epochs", "1", *SLICE,
                            "--out", str(tmp_path / d)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.load(open(tmp_path / d / "l1l2.json")) for d in "ab")
    assert a["config"]["compile"] and a["config"]["device"] == DEVICE, "the compiled CUDA path did not run"
    assert a["env"]["device_name"] == torch.cuda.get_device_name()
    assert metrics(a) == metrics(b)
    blobs = [open(checkpoint(tmp_path / d, r["runs"][0]), "rb").read() for d, r in (("a", a), ("b", b))]
    assert blobs[0] == blobs[1]
    acc = a["runs"][0]["final_test_acc"]
    assert acc > 50, f"one epoch on 2,000 images reached only {acc:.2f}% (chance: 10%)"


@pytest.mark.parametrize("masks", ["bytes", "bernoulli"])
def test_packed_training_equals_solo_on_cuda(run_train, tmp_path, masks):
    """Two variants x two seeds packed on the GPU end where the four solo GPU runs end (float64, 1e-5): each model
    keeps its own CUDA generators for data order, rotation and dropout."""
    args = [*FLOAT64_ARGS, "--dropout-masks", masks, "--device", DEVICE]
    for name in ("l1", "l2"):
        run_train("--variant", name, "--seeds", "0,1", *args, out=tmp_path / "solo", name=name)
    run_train("--variant", "l1,l2", "--seeds", "0,1", "--packed", *args, out=tmp_path / "packed")
    for name in ("l1", "l2"):
        solo, packed = (json.load(open(tmp_path / d / f"{name}.json")) for d in ("solo", "packed"))
        assert solo["config"]["device"] == packed["config"]["device"] == DEVICE
        for a, b in zip(solo["runs"], packed["runs"], strict=True):
            for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
                for key in ("train_loss", "penalty", "test_loss", "train_acc", "test_acc"):
                    assert abs(ea[key] - eb[key]) <= 1e-5, (name, a["seed"], key, ea[key], eb[key])
            wa, wb = (torch.load(checkpoint(tmp_path / d, r), weights_only=True) for d, r in (("solo", a), ("packed", b)))
            for k in wa:
                torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-5)


def test_resume_after_sigkill_equals_uninterrupted_on_cuda(tmp_path):
    """A GPU run killed after its first epoch and resumed (CUDA generator states restored from the CPU bytes the
    state file holds) ends bit-identical to one never interrupted."""
    resume_equals_uninterrupted(["--variant", "l1", "--epochs", "3", *SLICE, "--no-compile", *FP32], tmp_path, 180)
