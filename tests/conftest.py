"""Shared fixtures and helpers: the real MNIST (fetched once, verified), train.py in-process and as a program,
and the small checks every test file uses."""
import errno
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import model  # noqa: E402
import results  # noqa: E402
import stats  # noqa: E402
import train  # noqa: E402

DATA = os.path.join(ROOT, "data")
TRAIN_PY = os.path.join(ROOT, "train.py")
FP32 = ["--precision", "fp32"]  # eager bf16 is emulated on most CPUs (~4x slower); for tests of the loop, not numerics
METRICS = ("train_loss", "penalty", "train_acc", "test_loss", "test_acc", "lr", "momentum", "weight_norm")


@pytest.fixture(scope="session", autouse=True)
def mnist():
    """(train_x, train_y, test_x, test_y) as uint8, verified against the pinned hashes; fetched into data/ before
    the first test, so that no test depends on another having fetched it."""
    return data.load_mnist(DATA)


@pytest.fixture
def run_train(tmp_path):
    """Run `train.py ARGS` in-process on a small real slice; returns (exit code, parsed JSON or None).

    Eager by default: torch.compile costs 10-30 s per process the first time, and what a test checks (the
    loop, the files, the refusals) is the same either way; compiled=True takes the default compiled path."""
    def run(*args, out=None, name="none", compiled=False):
        out = str(out or tmp_path)
        limit = [] if "--train-subset" in args else ["--train-limit", "640"]  # a subset is a limit of its own
        argv = ["--data", DATA, "--out", out, *limit, "--test-limit", "320", "--device", "cpu",
                *([] if compiled else ["--no-compile"]), *args]
        code = train.main(argv)
        path = os.path.join(out, f"{name}.json")
        return code, (json.load(open(path)) if os.path.exists(path) else None)
    return run


def checkpoint(folder, run):
    """The path of a run's checkpoint: the JSON names it relative to its own folder."""
    return os.path.join(str(folder), run["checkpoint"])


def metrics(result):
    """Everything a run measured except wall time."""
    return [[{k: e[k] for k in METRICS} for e in r["epochs"]] + [r["final_test_acc"], r["misclassified"]]
            for r in result["runs"]]


def one_line_error(capsys):
    """stderr of a failed main(): exactly one non-empty line, no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def popen(*args, script=TRAIN_PY):
    """A script as a program, with Ctrl-C at its default even where the calling shell ignores SIGINT."""
    return subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


N_SYNTHETIC = 2000  # a synthetic result's test_limit: every final accuracy in steps of 0.05 points is reachable


def make_result(folder, variant, finals, mnist, epochs=3, **config):
    """A synthetic schema-3 <variant>.json that results.load accepts, with real (untrained) nets as checkpoints
    beside it: each seed's misclassified list has the length its final accuracy implies (real digits of the
    evaluated split, each "predicted" as the next digit), the derived numbers follow from the epochs. Variants with
    an L1 penalty get soft-thresholded weights (exact zeros), as a strong L1 pull would leave."""
    cfg = asdict(train.Config(**{"variant": variant, "epochs": epochs, "seeds": list(finals), "test_limit": N_SYNTHETIC,
                                 "name": variant} | config))
    n = cfg["test_limit"] or 10000
    labels = (mnist[1][50000:] if cfg["val"] else mnist[3])[:n]
    runs = []
    for seed, final in finals.items():
        torch.manual_seed(seed)
        net = model.Net()
        with torch.no_grad():
            for w in (p for p in net.parameters() if p.dim() == 4 and cfg["l1"]):
                w.copy_(w.sign() * (w.abs() - 0.3 * w.abs().max()).clamp(min=0))
        state = net.state_dict()
        wrong = round(n * (100 - final) / 100)
        assert 100.0 * (n - wrong) / n == final, f"{final} is not reachable with {n} images"
        norms = {k.split(".")[0]: w.norm().item() for k, w in state.items() if w.dim() == 4}  # conv1..conv9
        accs = [final - 0.3, final + 0.1, final, final][:epochs - 1] + [final]
        lrs = [0.05, 0.1, 0.01, 0.001][:epochs - 1] + [1e-6]
        ckpt = results.checkpoint_name(variant, seed, state)
        torch.save(state, os.path.join(str(folder), ckpt))
        runs.append({"seed": seed, "status": "ok", "pack_size": 1, "epochs": [
            {"epoch": e + 1, "train_loss": 0.1 / (e + 1), "penalty": 0.01, "train_acc": 98.0, "test_loss": 0.05 / (e + 1),
             "test_acc": a, "lr": lr, "momentum": 0.9, "seconds": 10.0,
             "weight_norm": {k: v * (1 + 0.2 * (epochs - 1 - e)) for k, v in norms.items()}}
            for e, (a, lr) in enumerate(zip(accs, lrs))],
            "final_test_acc": final, "test_correct": n - wrong, "best_test_acc": max(accs),
            "best_epoch": accs.index(max(accs)) + 1, "first_epoch_at_99_4": next((e + 1 for e, a in enumerate(accs)
                                                                                  if a >= 99.40), None),
            "near_zero_fraction": model.near_zero_fraction(state),
            "misclassified": [{"index": i, "label": int(labels[i]), "pred": (int(labels[i]) + 1) % 10}
                              for i in range(0, n // max(wrong, 1) * wrong, n // max(wrong, 1))],
            "checkpoint": ckpt, "env": {"command": "synthetic", "device": "cpu"}})
    result = {"schema": results.SCHEMA, "variant": variant, "config": cfg,
              "env": {"command": "synthetic", "device": "cpu", "git_commit": None, "torch": torch.__version__},
              "runs": runs, "summary": stats.summarize(runs)}
    with open(os.path.join(str(folder), f"{variant}.json"), "w") as f:
        json.dump(result, f)
    return result


@pytest.fixture
def two_variants(tmp_path, mnist):
    """none and l1, two seeds each, three epochs: tmp_path."""
    make_result(tmp_path, "none", {0: 99.40, 1: 99.30}, mnist)
    make_result(tmp_path, "l1", {0: 99.50, 1: 99.45}, mnist, l1=1e-5)
    return tmp_path


def with_diverged_variant(folder, mnist):
    """none (two seeds) beside l2 whose two seeds diverged at epoch 2 of 3."""
    make_result(folder, "none", {0: 99.40, 1: 99.30}, mnist)
    r = make_result(folder, "l2", {0: 99.0, 1: 99.0}, mnist, l2=1e30)
    for run in r["runs"]:
        run.update(status="diverged", diverged_epoch=2)
        run["epochs"][1].update(train_loss=None, test_loss=None)
        del run["epochs"][2]
    r["summary"] = stats.summarize(r["runs"])
    (folder / "l2.json").write_text(json.dumps(r))


def stop_at_second_save(monkeypatch, argv):
    """train.main(argv) with the disk full at the second state save: the state after epoch 1 is written, the run
    stops with exit 1 before its second epoch is saved. Returns the exit code."""
    save_torch, calls = results.save_torch, []

    def second_save_fails(path, obj):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        save_torch(path, obj)
    with monkeypatch.context() as m:
        m.setattr(results, "save_torch", second_save_fails)
        with pytest.raises(SystemExit) as e:
            train.main(argv)
    return e.value.code
