"""Training: learns, is deterministic, writes the promised JSON and checkpoints, resumes exactly."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from conftest import DATA, ROOT
from model import Net

METRICS = ("train_loss", "penalty", "train_acc", "test_loss", "test_acc", "lr")


def metrics(result):
    """Everything a run measured except wall time."""
    return [[{k: e[k] for k in METRICS} for e in r["epochs"]] + [r["final_test_acc"], r["misclassified"]]
            for r in result["runs"]]


def test_short_run_learns(run_train):
    """Two epochs on 2,000 real images reach far above chance (10%) on 320 test images."""
    code, res = run_train("--variant", "none", "--epochs", "2", "--train-limit", "2000")
    acc = res["runs"][0]["final_test_acc"]
    assert code == 0 and acc > 70, f"acc {acc:.2f} <= 70 after 2 epochs on 2,000 images"


def test_same_command_same_numbers(run_train, tmp_path):
    """Two runs of the same command give identical metrics and bit-identical weights; another seed differs."""
    _, a = run_train("--variant", "l1l2", "--epochs", "1", out=tmp_path / "a", name="l1l2")
    _, b = run_train("--variant", "l1l2", "--epochs", "1", out=tmp_path / "b", name="l1l2")
    _, c = run_train("--variant", "l1l2", "--epochs", "1", "--seeds", "1", out=tmp_path / "c", name="l1l2")
    assert metrics(a) == metrics(b)
    wa, wb = (torch.load(tmp_path / d / "l1l2-seed0.pt", weights_only=True) for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert metrics(a) != metrics(c)


def test_variants_share_initial_weights_and_data_order(run_train, tmp_path):
    """For one seed, only the penalty differs between variants: with lambda 0 l1 reproduces none exactly."""
    _, none = run_train("--variant", "none", "--epochs", "1", out=tmp_path / "n")
    _, l1 = run_train("--variant", "l1", "--l1", "0", "--epochs", "1", out=tmp_path / "l", name="l1")
    assert metrics(none) == metrics(l1)


def test_json_schema_and_checkpoint(run_train, tmp_path):
    """The JSON has every promised key; the checkpoint loads into a plain Net() and reproduces the score."""
    code, res = run_train("--variant", "l2", "--epochs", "2", "--seeds", "0,1", name="l2")
    assert code == 0 and res["schema"] == 1 and res["variant"] == "l2"
    assert {"normalize", "epochs", "seeds", "l1", "l2", "lr", "batch_size"} <= set(res["config"])
    assert set(res["config"]["normalize"]) == {"mean", "std"}
    assert {"command", "git_commit", "torch", "device", "deterministic", "started", "wall_s"} <= set(res["env"])
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    run = res["runs"][0]
    assert {"seed", "epochs", "final_test_acc", "test_correct", "best_test_acc", "best_epoch", "first_epoch_at_99_4",
            "misclassified", "checkpoint"} <= set(run)
    assert [set(e) for e in run["epochs"]] == [{"epoch", *METRICS, "seconds"}] * 2
    assert run["epochs"][-1]["penalty"] > 0 and run["final_test_acc"] == run["epochs"][-1]["test_acc"]
    assert len(run["misclassified"]) == 320 - run["test_correct"]
    assert {"final_test_acc_mean", "final_test_acc_std", "final_test_acc_min", "seeds"} <= set(res["summary"])
    # the checkpoint is a plain state_dict for model.Net; the path is relative to the repository
    ckpt = os.path.join(ROOT, run["checkpoint"])
    net = Net()
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    import data
    x, y = data.load_mnist(DATA)[2:]
    with torch.no_grad():
        pred = net.eval()(data.to_float(x[:320], res["config"]["normalize"])).argmax(1)
    assert (pred == y[:320].long()).sum().item() == run["test_correct"]


def test_huge_lambda_diverges(run_train):
    """A penalty that blows the weights up is recorded as diverged, and the exit code says so."""
    code, res = run_train("--variant", "l2", "--l2", "1e30", "--epochs", "2", name="l2")
    assert code == 1
    assert res["runs"][0]["status"] == "diverged" and res["runs"][0]["diverged_epoch"] == 1
    assert res["summary"]["final_test_acc_mean"] is None


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, run_train):
    """A run killed (SIGKILL) after its first epoch and resumed ends bit-identical to one never interrupted."""
    args = ["--variant", "l1", "--epochs", "4", "--train-limit", "1280", "--test-limit", "320", "--device", "cpu",
            "--data", DATA]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "state" / "l1-seed0.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run finished or failed before it could be killed"
    assert train.main([*args, "--out", str(killed), "--resume"]) == 0
    assert not state.exists(), "a finished run must remove its state"
    assert train.main([*args, "--out", str(tmp_path / "whole")]) == 0
    resumed, whole = (json.load(open(tmp_path / d / "l1.json")) for d in ("killed", "whole"))
    assert metrics(resumed) == metrics(whole)
    wa, wb = (torch.load(tmp_path / d / "l1-seed0.pt", weights_only=True) for d in ("killed", "whole"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_state_explains(tmp_path, capsys):
    """--resume with nothing to resume is a one-line error and exit 2."""
    with pytest.raises(SystemExit) as e:
        train.main(["--variant", "l1", "--data", DATA, "--out", str(tmp_path), "--resume"])
    assert e.value.code == 2 and "no saved state" in capsys.readouterr().err


def test_resume_with_other_config_explains(tmp_path, capsys):
    """State saved by another config is refused, not silently mixed."""
    from train import Config, comparable, save_torch
    from dataclasses import asdict
    os.makedirs(tmp_path / "state")
    save_torch(str(tmp_path / "state" / "l1-seed0.pt"), {"members": [comparable(asdict(Config(lr=0.5)))]})
    with pytest.raises(SystemExit) as e:
        train.main(["--variant", "l1", "--data", DATA, "--out", str(tmp_path), "--resume", "--epochs", "1",
                    "--train-limit", "64", "--test-limit", "64", "--device", "cpu"])
    assert e.value.code == 2 and "different config" in capsys.readouterr().err


BAD = [  # (arguments, fragment of the error message)
    (["--variant", "l3"], "invalid choice: 'l3'"),
    (["--variant", "l1", "--epochs", "0"], "must be > 0"),
    (["--variant", "l1", "--epochs", "abc"], "is not an integer"),
    (["--variant", "l1", "--epochs", "1.5"], "is not an integer"),
    (["--variant", "l1", "--seeds", "a,b"], "comma-separated list of integers"),
    (["--variant", "l1", "--seeds", "1,1"], "distinct"),
    (["--variant", "l1", "--seeds", "0,-1"], "distinct and >= 0"),
    (["--variant", "l1", "--l1", "-1"], "finite number >= 0"),
    (["--variant", "l1", "--l1", "nan"], "finite number >= 0"),
    (["--variant", "l1", "--l2", "inf"], "finite number >= 0"),
    (["--variant", "l1", "--lr", "0"], "must be > 0"),
    (["--variant", "l1", "--lr", "nan"], "finite number"),
    (["--variant", "l1", "--dropout", "1"], "must be < 1"),
    (["--variant", "l1", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["--variant", "l1", "--train-limit", "0"], "must be > 0"),
    (["--variant", "l1", "--train-limit", "70000"], "larger than the 60,000 images"),
    (["--variant", "l1", "--test-limit", "20000"], "larger than the 10,000 images"),
    (["--variant", "l1", "--data", "/nonexistent/mnist"], "is not a directory"),
    (["--variant", "l1", "--out", "/proc/no/such"], "cannot write to --out"),
    (["--variant", "l1", "--name", "../x"], "plain file name"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_a_one_line_error(args, message, capsys, tmp_path):
    """Every bad input ends with exit 2 and a short message naming the problem, no traceback."""
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path)]
    if "--data" not in args:
        args = [*args, "--data", DATA]
    with pytest.raises(SystemExit) as e:
        train.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and len(err) <= 2, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(capsys):
    """Asking for cuda where there is none is a clear error, not a crash deep in torch."""
    with pytest.raises(SystemExit) as e:
        train.main(["--variant", "l1", "--device", "cuda"])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_bad_variant_from_the_shell():
    """Run as a program: exit 2, argparse's usage line and one error line, no traceback."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--variant", "l3"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr
    assert "invalid choice: 'l3'" in r.stderr


def test_corrupt_data_never_trains(tmp_path, capsys, mnist):
    """A data folder holding an altered file stops the run before training and names the file."""
    import shutil
    import data
    os.makedirs(data.raw_dir(str(tmp_path / "d")))
    for name in data.FILES:
        shutil.copy(os.path.join(data.raw_dir(DATA), name), data.raw_dir(str(tmp_path / "d")))
    with open(os.path.join(data.raw_dir(str(tmp_path / "d")), "t10k-images-idx3-ubyte"), "r+b") as f:
        f.truncate(5000)
    with pytest.raises(SystemExit) as e:
        train.main(["--variant", "l1", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "t10k-images-idx3-ubyte" in err and "make data" in err
    assert not os.path.exists(tmp_path / "o" / "l1.json")


def test_make_rejects_bad_epochs():
    """`make l1 EPOCHS=abc` stops before training with a message naming the variable."""
    r = subprocess.run(["make", "-C", ROOT, "l1", "EPOCHS=abc"], capture_output=True, text=True)
    assert r.returncode != 0 and "EPOCHS=abc must be a positive integer" in r.stderr


def test_resume_adds_seeds_and_keeps_provenance(run_train, tmp_path):
    """--resume with more seeds keeps the finished ones (same numbers) and records where they came from."""
    _, first = run_train("--variant", "l1", "--epochs", "1", "--seeds", "0", name="l1")
    _, more = run_train("--variant", "l1", "--epochs", "1", "--seeds", "0,1", "--resume", name="l1")
    assert [r["seed"] for r in more["runs"]] == [0, 1]
    assert more["runs"][0] == first["runs"][0]
    assert more["env"]["earlier"]["started"] == first["env"]["started"]


def test_ctrl_c_is_a_message_not_a_traceback(tmp_path):
    """Ctrl-C (SIGINT) mid-run exits 130 with one line that says how to continue; the epoch state stays."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--variant", "none", "--epochs", "5",
                             "--train-limit", "1280", "--test-limit", "320", "--device", "cpu", "--data", DATA,
                             "--out", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "state" / "none-seed0.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate()[1]
    assert proc.returncode == 130 and "Traceback" not in err and "--resume" in err, err
    assert state.exists()
