"""Training: learns, is deterministic, writes a JSON that tells the truth, resumes exactly, fails in one line."""
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import data
import loop
import results
import train
from conftest import DATA, ROOT, checkpoint
from model import Net

METRICS = ("train_loss", "penalty", "train_acc", "test_loss", "test_acc", "lr", "momentum", "weight_norm")
FP32 = ["--precision", "fp32"]  # eager bf16 is emulated on most CPUs (~4x slower); for tests of the loop, not numerics
TRAIN_PY = os.path.join(ROOT, "train.py")


def metrics(result):
    """Everything a run measured except wall time."""
    return [[{k: e[k] for k in METRICS} for e in r["epochs"]] + [r["final_test_acc"], r["misclassified"]]
            for r in result["runs"]]


def one_line_error(capsys):
    """stderr of a failed train.main: exactly one non-empty line, no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def popen(*args):
    """train.py as a program, with Ctrl-C at its default even where the calling shell ignores SIGINT."""
    return subprocess.Popen([sys.executable, TRAIN_PY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


# -----------------------------------------------------------------------------
# it learns, and the same command gives the same numbers

def test_short_run_learns(run_train):
    """Two epochs on 2,000 real images reach far above chance (10%) on 320 test images."""
    code, res = run_train("--variant", "none", "--epochs", "2", "--train-limit", "2000")
    acc = res["runs"][0]["final_test_acc"]
    assert code == 0 and acc > 70, f"acc {acc:.2f} <= 70 after 2 epochs on 2,000 images"


def test_ghost_bn_run_learns(run_train):
    """A gbn run through train.py (virtual batches of 8) learns far above chance on a small slice."""
    code, res = run_train("--variant", "gbn", "--epochs", "2", "--train-limit", "2000", name="gbn")
    acc = res["runs"][0]["final_test_acc"]
    assert code == 0 and res["config"]["norm"] == "gbn" and acc > 70, f"gbn acc {acc:.2f} <= 70 after 2 epochs"


def test_same_command_same_numbers(run_train, tmp_path):
    """Two runs of the same command give identical metrics and byte-identical checkpoints; another seed differs."""
    _, a = run_train("--variant", "l1l2", "--epochs", "1", out=tmp_path / "a", name="l1l2")
    _, b = run_train("--variant", "l1l2", "--epochs", "1", out=tmp_path / "b", name="l1l2")
    _, c = run_train("--variant", "l1l2", "--epochs", "1", "--seeds", "1", out=tmp_path / "c", name="l1l2")
    assert metrics(a) == metrics(b)
    assert open(checkpoint(a["runs"][0]), "rb").read() == open(checkpoint(b["runs"][0]), "rb").read()
    assert metrics(a) != metrics(c)


def test_same_command_same_numbers_across_processes(tmp_path):
    """The default (compiled, bf16) path run twice as a program: the same metrics and checkpoint bytes."""
    args = ["--variant", "none", "--epochs", "1", "--train-limit", "320", "--test-limit", "160", "--device", "cpu",
            "--data", DATA]
    for d in ("a", "b"):
        r = subprocess.run([sys.executable, TRAIN_PY, *args, "--out", str(tmp_path / d)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = (json.load(open(tmp_path / d / "none.json")) for d in "ab")
    assert a["config"]["compile"] and b["config"]["compile"], "the compiled path fell back to eager"
    assert metrics(a) == metrics(b)
    assert open(checkpoint(a["runs"][0]), "rb").read() == open(checkpoint(b["runs"][0]), "rb").read()


def test_variants_share_initial_weights_and_data_order(run_train, tmp_path):
    """For one seed, only the penalty differs between variants: with lambda 0 l1 reproduces none exactly."""
    _, none = run_train("--variant", "none", "--epochs", "1", out=tmp_path / "n")
    _, l1 = run_train("--variant", "l1", "--l1", "0", "--epochs", "1", out=tmp_path / "l", name="l1")
    assert metrics(none) == metrics(l1)


def test_huge_lambda_diverges(run_train):
    """A penalty that blows the weights up is recorded as diverged, and the exit code says so."""
    code, res = run_train("--variant", "l2", "--l2", "1e30", "--epochs", "2", *FP32, name="l2")
    assert code == 1
    assert res["runs"][0]["status"] == "diverged" and res["runs"][0]["diverged_epoch"] == 1
    assert res["summary"]["final_test_acc_mean"] is None


# -----------------------------------------------------------------------------
# the JSON tells the truth

def test_json_schema_and_checkpoint(run_train, mnist):
    """The JSON has every promised key; the checkpoint it names loads into a plain Net() and reproduces the score."""
    code, res = run_train("--variant", "l2", "--epochs", "2", "--seeds", "0,1", *FP32, name="l2")
    assert code == 0 and res["schema"] == 2 and res["variant"] == "l2"
    assert {"normalize", "epochs", "seeds", "l1", "l2", "lr", "batch_size", "compile", "precision", "dropout_masks",
            "eval_batch_size", "cycle_momentum", "momentum_range"} <= set(res["config"])
    assert {"command", "git_commit", "torch", "device", "deterministic", "data_sha256", "started",
            "wall_s"} <= set(res["env"])
    assert [r["seed"] for r in res["runs"]] == [0, 1] and res["config"]["seeds"] == [0, 1]
    run = res["runs"][0]
    assert {"seed", "epochs", "final_test_acc", "test_correct", "best_test_acc", "best_epoch", "first_epoch_at_99_4",
            "misclassified", "checkpoint", "near_zero_fraction", "pack_size", "env"} <= set(run)
    assert [set(e) for e in run["epochs"]] == [{"epoch", *METRICS, "seconds"}] * 2
    assert run["epochs"][-1]["penalty"] > 0
    # the dropout probability that really ran: exact with bernoulli masks, a multiple of 1/256 with bytes
    assert run["dropout_p"] == (0.05 if res["config"]["dropout_masks"] == "bernoulli" else 13 / 256)
    net = Net()
    net.load_state_dict(torch.load(checkpoint(run), weights_only=True))
    x, y = mnist[2][:320], mnist[3][:320]
    with torch.no_grad():
        pred = net.eval()(data.to_float(x, res["config"]["normalize"])).argmax(1)
    assert (pred == y.long()).sum().item() == run["test_correct"]


def test_json_values_are_what_was_computed(run_train, capsys):
    """Final accuracy, misclassified, weight norms and near-zero fraction agree with the checkpoint; env is true;
    one seed prints without a ± (there is no spread to print)."""
    code, res = run_train("--variant", "l1", "--epochs", "2", "--test-limit", "160", name="l1")
    out = capsys.readouterr().out
    assert code == 0 and "(1 seed)" in out and "±" not in out, out
    run = res["runs"][0]
    assert run["final_test_acc"] == run["epochs"][-1]["test_acc"]
    assert len(run["misclassified"]) == 160 - run["test_correct"]
    assert run["final_test_acc"] == 100 * run["test_correct"] / 160
    sd = torch.load(checkpoint(run), weights_only=True)
    convs = {k.split(".")[0]: w.double() for k, w in sd.items() if w.dim() == 4}
    assert set(run["epochs"][-1]["weight_norm"]) == set(convs) == {f"conv{i}" for i in range(1, 10)}
    for name, w in convs.items():
        assert run["epochs"][-1]["weight_norm"][name] == pytest.approx(torch.linalg.norm(w.flatten()).item(), rel=1e-6)
    small = sum((w.abs() < 0.01 * w.abs().max()).sum().item() for w in convs.values())
    assert run["near_zero_fraction"] == pytest.approx(small / sum(w.numel() for w in convs.values()), rel=1e-12)
    assert res["env"]["deterministic"] is True and run["env"]["deterministic"] is True
    assert run["pack_size"] == 1 and res["env"]["device"] == "cpu"


def test_without_git_the_commit_is_unknown(run_train, monkeypatch):
    """A machine without git (or a copied tree) still trains; the JSON records the commit as unknown (null)."""
    def no_git(cmd, **kw):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])
    monkeypatch.setattr(train.subprocess, "run", no_git)
    code, res = run_train("--variant", "none", "--epochs", "1", "--train-limit", "64", "--test-limit", "64", *FP32)
    assert code == 0 and res["env"]["git_commit"] is None and res["env"]["git_dirty"] is None


def test_data_sha256_names_the_files_read(run_train):
    """env.data_sha256 is the SHA-256 of the four files' SHA-256 hex digests, in the order train.py reads them."""
    _, res = run_train("--variant", "none", "--epochs", "1", "--train-limit", "64", "--test-limit", "64", *FP32)
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    digests = [hashlib.sha256(open(os.path.join(DATA, "MNIST", "raw", n), "rb").read()).hexdigest() for n in names]
    assert res["env"]["data_sha256"] == hashlib.sha256("".join(digests).encode()).hexdigest()


def test_momentum_cycles_and_is_recorded(run_train, tmp_path):
    """With cycle_momentum each epoch records the momentum it started with (0.95, falling, within the range);
    without it the momentum is the configured constant."""
    _, cyc = run_train("--variant", "none", "--epochs", "3", "--train-limit", "320", "--test-limit", "64", *FP32,
                       out=tmp_path / "c")
    lo, hi = cyc["config"]["momentum_range"]
    m = [e["momentum"] for e in cyc["runs"][0]["epochs"]]
    assert cyc["config"]["cycle_momentum"] is True and (lo, hi) == (0.85, 0.95)
    assert m[0] == pytest.approx(hi) and m[1] < m[0] and all(lo - 1e-9 <= v <= hi + 1e-9 for v in m), m
    _, const = run_train("--variant", "none", "--epochs", "2", "--train-limit", "320", "--test-limit", "64", *FP32,
                         "--no-cycle-momentum", "--momentum", "0.8", out=tmp_path / "k")
    assert const["config"]["cycle_momentum"] is False
    assert [e["momentum"] for e in const["runs"][0]["epochs"]] == [0.8, 0.8]


def test_lambda_override_applies_only_to_variants_with_that_penalty(run_train, tmp_path):
    """`--variant none,l1 --l1 1e-3` trains none without a penalty and l1 with lambda_1 = 1e-3."""
    code, none = run_train("--variant", "none,l1", "--l1", "1e-3", "--epochs", "1", "--train-limit", "64",
                           "--test-limit", "64", *FP32)
    l1 = json.load(open(tmp_path / "l1.json"))
    assert code == 0 and none["config"]["l1"] == 0 and l1["config"]["l1"] == 1e-3
    assert none["runs"][0]["epochs"][0]["penalty"] == 0 and l1["runs"][0]["epochs"][0]["penalty"] > 0


def test_packed_seconds_are_the_pack_wall_over_k(run_train, monkeypatch):
    """Packed models share one wall clock: each records the pack's seconds divided by K, and pack_size K."""
    class Clock:  # every perf_counter() call in loop.py advances 6 s, so an epoch's wall is exactly 6 s
        now = 0.0

        @classmethod
        def perf_counter(cls):
            cls.now += 6.0
            return cls.now
        strftime = staticmethod(time.strftime)
    monkeypatch.setattr(loop, "time", Clock)
    code, res = run_train("--variant", "none", "--seeds", "0,1", "--packed", "--epochs", "2", "--train-limit", "64",
                          "--test-limit", "64", *FP32)
    assert code == 0 and [r["pack_size"] for r in res["runs"]] == [2, 2]
    assert [[e["seconds"] for e in r["epochs"]] for r in res["runs"]] == [[3.0, 3.0], [3.0, 3.0]]
    assert [r["env"]["wall_s"] for r in res["runs"]] == [6.0, 6.0]


def test_val_never_reads_the_test_set(run_train, monkeypatch, mnist):
    """--val evaluates on the last 10,000 training images: a garbage test set changes nothing it computes."""
    real, seen = data.load_mnist, []

    def garbage_test_set(*args, **kw):
        train_x, train_y, test_x, test_y = real(*args, **kw)
        return train_x, train_y, torch.full_like(test_x, 255), torch.zeros_like(test_y)
    evaluate = loop.evaluate
    monkeypatch.setattr(data, "load_mnist", garbage_test_set)
    monkeypatch.setattr(loop, "evaluate", lambda net, x, y, cfg: seen.append((x, y)) or evaluate(net, x, y, cfg))
    code, res = run_train("--variant", "none", "--val", "--epochs", "1", "--train-limit", "64", "--test-limit", "160",
                          *FP32)
    assert code == 0 and res["config"]["val"] is True
    for x, y in seen:
        assert torch.equal(x.cpu(), mnist[0][50000:50160]) and torch.equal(y.cpu(), mnist[1][50000:50160])
    assert all(m["label"] == int(mnist[1][50000 + m["index"]]) for m in res["runs"][0]["misclassified"])


# -----------------------------------------------------------------------------
# resume: exact after a kill, refused where it would mix two runs

def resume_equals_uninterrupted(args, tmp_path, timeout=120):
    """Run train.py ARGS (variant l1, seed 0) as a program, SIGKILL it once its first epoch's state is saved,
    finish it with --resume, run it again uninterrupted: the two must end bit-identical."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, TRAIN_PY, *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = killed / "state" / "l1-seed0.pt"
    deadline = time.time() + timeout
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), f"the run finished or failed before it could be killed: {proc.stderr.read()[-2000:]}"
    assert train.main([*args, "--out", str(killed), "--resume"]) == 0
    assert not state.exists(), "a finished run must remove its state"
    assert train.main([*args, "--out", str(tmp_path / "whole")]) == 0
    resumed, whole = (json.load(open(tmp_path / d / "l1.json")) for d in ("killed", "whole"))
    assert metrics(resumed) == metrics(whole)
    wa, wb = (torch.load(checkpoint(r["runs"][0]), weights_only=True) for r in (resumed, whole))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    """A run killed (SIGKILL) after its first epoch and resumed ends bit-identical to one never interrupted."""
    resume_equals_uninterrupted(["--variant", "l1", "--epochs", "3", "--train-limit", "640", "--test-limit", "160",
                                 "--device", "cpu", "--data", DATA, "--no-compile", *FP32], tmp_path)


@pytest.fixture
def stopped(tmp_path, monkeypatch, capsys):
    """A run stopped by a full disk after its first epoch: (its arguments, its state file, its stderr); no JSON."""
    args = ["--variant", "l1", "--epochs", "2", "--train-limit", "64", "--test-limit", "64", "--device", "cpu",
            "--data", DATA, "--out", str(tmp_path), "--no-compile", *FP32]
    save_torch, calls = results.save_torch, []

    def second_save_fails(path, obj):  # the state after epoch 1 is written, the one after epoch 2 is not
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        save_torch(path, obj)
    with monkeypatch.context() as m:
        m.setattr(results, "save_torch", second_save_fails)
        with pytest.raises(SystemExit) as e:
            train.main(args)
    assert e.value.code == 1 and not (tmp_path / "l1.json").exists()
    return args, tmp_path / "state" / "l1-seed0.pt", capsys.readouterr().err


def test_full_disk_is_one_line_and_resumable(stopped, capsys):
    """A full disk while training: exit 1, one line naming the file, the problem and --resume; --resume finishes."""
    args, state, err = stopped
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "No space left on device" in err and str(state) in err and "--resume" in err, err
    assert state.exists() and not list(state.parent.glob("*.tmp*"))
    assert train.main([*args, "--resume"]) == 0
    res = json.load(open(state.parent.parent / "l1.json"))
    assert [e["epoch"] for e in res["runs"][0]["epochs"]] == [1, 2] and not state.exists()


def test_resume_with_truncated_state_is_one_line(stopped, capsys):
    """--resume from a truncated state file: exit 2 and one line naming the file, no traceback."""
    args, state, _ = stopped
    blob = state.read_bytes()
    state.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(SystemExit) as e:
        train.main([*args, "--resume"])
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(state) in err and "damaged" in err, err


@pytest.mark.parametrize("change", ["device", "lr"])
def test_resume_with_other_config_or_device_is_refused(stopped, capsys, change):
    """State saved on another device, or by another config, is refused, not silently mixed."""
    args, state, _ = stopped
    if change == "device":  # as if saved on a GPU: the state's signature names its device
        st = torch.load(state, weights_only=True)
        assert [m["device"] for m in st["members"]] == ["cpu"]
        st["members"] = [m | {"device": "cuda"} for m in st["members"]]
        results.save_torch(str(state), st)
    else:
        args = [*args, "--lr", "0.05"]
    with pytest.raises(SystemExit) as e:
        train.main([*args, "--resume"])
    err = one_line_error(capsys)
    assert e.value.code == 2 and "different config or device" in err, err


def test_resume_without_state_explains(tmp_path, capsys):
    """--resume with nothing to resume is a one-line error and exit 2."""
    with pytest.raises(SystemExit) as e:
        train.main(["--variant", "l1", "--data", DATA, "--out", str(tmp_path), "--resume", "--no-compile",
                    "--train-limit", "64", "--test-limit", "64", "--device", "cpu"])
    assert e.value.code == 2 and "no saved state" in one_line_error(capsys)


# -----------------------------------------------------------------------------
# bad input: exit 2, one line, no traceback, and nothing trained

BAD = [  # (arguments, fragment of the error message, refused by the parser: before any file is touched)
    (["--variant", "l3"], "invalid choice: 'l3'", True),
    (["--variant", "l1", "--epochs", "0"], "must be an integer > 0", True),
    (["--variant", "l1", "--epochs", "abc"], "must be an integer > 0", True),
    (["--variant", "l1", "--epochs", "1.5"], "must be an integer > 0", True),
    (["--variant", "l1", "--seeds", "a,b"], "must be distinct comma-separated integers in [0, 2^32)", True),
    (["--variant", "l1", "--seeds", "1,1"], "must be distinct", True),
    (["--variant", "l1", "--seeds", "0,-1"], "in [0, 2^32)", True),
    (["--variant", "l1", "--seeds", "0,4294967296"], "argument --seeds: '0,4294967296' must be", True),
    (["--variant", "l1", "--l1", "-1"], "finite number >= 0", True),
    (["--variant", "l1", "--l1", "nan"], "finite number >= 0", True),
    (["--variant", "l2", "--l2", "inf"], "finite number >= 0", True),
    (["--variant", "none", "--l2", "1e-3"], "none of none has an L2 penalty", True),
    (["--variant", "l1", "--lr", "0"], "must be a finite number > 0", True),
    (["--variant", "l1", "--lr", "nan"], "must be a finite number > 0", True),
    (["--variant", "l1", "--dropout", "1"], "must be < 1", True),
    (["--variant", "l1", "--warmup", "1"], "must be < 1", True),
    (["--variant", "l1", "--device", "tpu"], "invalid choice: 'tpu'", True),
    (["--variant", "l1", "--dtype", "float64"], "needs --precision fp32", True),
    (["--variant", "l1,gbn", "--packed"], "one kind of norm", True),
    (["--variant", "l1", "--train-limit", "0"], "must be an integer > 0", True),
    (["--variant", "l1", "--name", "../x"], "plain file name", True),
    (["--variant", "l1", "--name", "x" * 300], "at most 100 characters", True),
    (["--variant", "l1,l2", "--name", "x"], "for one variant", True),
    (["--variant", "l1", "--train-limit", "70000"], "larger than the 60,000 images", False),
    (["--variant", "l1", "--test-limit", "20000"], "larger than the 10,000 images", False),
    (["--variant", "l1", "--data", "/nonexistent/mnist"], "is not a directory", False),
    (["--variant", "l1", "--out", "/proc/no/such"], "cannot write to --out", False),
]


@pytest.mark.parametrize("args,message,at_parse", BAD, ids=[" ".join(a)[:60] for a, _, _ in BAD])
def test_bad_input_is_a_one_line_error(args, message, at_parse, capsys, tmp_path, monkeypatch):
    """Every bad input ends with exit 2 and one line naming the problem, no traceback, before any training."""
    monkeypatch.setattr(train, "train_pack", lambda *a, **kw: pytest.fail("bad input reached training"))
    out = tmp_path / "out"
    args = [*args, *([] if "--out" in args else ["--out", str(out)]), *([] if "--data" in args else ["--data", DATA]),
            "--no-compile"]
    with pytest.raises(SystemExit) as e:
        train.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and len(err) <= 2 and "Traceback" not in "".join(err), err
    if at_parse:
        assert not out.exists(), "refused only after touching --out"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(capsys):
    """Asking for cuda where there is none is a clear error, not a crash deep in torch."""
    with pytest.raises(SystemExit) as e:
        train.main(["--variant", "l1", "--device", "cuda"])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_bad_variant_from_the_shell():
    """Run as a program: exit 2, argparse's usage line and one error line, no traceback."""
    r = subprocess.run([sys.executable, TRAIN_PY, "--variant", "l3"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr
    assert "invalid choice: 'l3'" in r.stderr


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to fetch MNIST fails the test: a broken data folder must be reported, not re-downloaded."""
    for fn in ("fetch_torchvision", "fetch_pypi"):
        monkeypatch.setattr(data, fn, lambda root: pytest.fail("tried to download MNIST"))


def bad_data_folder(tmp_path, damage):
    """A data folder holding copies of the IDX files, then damaged."""
    import shutil
    root = tmp_path / "d"
    raw = root / "MNIST" / "raw"
    os.makedirs(raw)
    for name in data.FILES:
        shutil.copy(os.path.join(data.raw_dir(DATA), name), raw)
    damage(raw)
    return str(root)


def truncate_test_images(raw):
    with open(raw / "t10k-images-idx3-ubyte", "r+b") as f:
        f.truncate(5000)


def directory_for_test_labels(raw):
    os.remove(raw / "t10k-labels-idx1-ubyte")
    os.mkdir(raw / "t10k-labels-idx1-ubyte")


def symlink_loop_for_raw(raw):
    import shutil
    shutil.rmtree(raw)
    os.symlink("raw", raw)  # MNIST/raw -> MNIST/raw: every lookup below it fails with ELOOP


@pytest.mark.parametrize("damage,names", [(truncate_test_images, "t10k-images-idx3-ubyte"),
                                          (directory_for_test_labels, "t10k-labels-idx1-ubyte"),
                                          (symlink_loop_for_raw, os.path.join("MNIST", "raw"))],
                         ids=["truncated", "directory", "symlink-loop"])
def test_broken_data_never_trains(tmp_path, capsys, no_download, monkeypatch, damage, names):
    """A truncated IDX file, an IDX path that is a directory, a raw/ folder that is a symlink loop: exit 2 and one
    line naming the path, before any training."""
    monkeypatch.setattr(train, "train_pack", lambda *a, **kw: pytest.fail("broken data reached training"))
    root = bad_data_folder(tmp_path, damage)
    with pytest.raises(SystemExit) as e:
        train.main(["--variant", "l1", "--data", root, "--out", str(tmp_path / "o"), "--no-compile"])
    err = one_line_error(capsys)
    assert e.value.code == 2 and names in err, err
    assert not os.path.exists(tmp_path / "o" / "l1.json")


def test_make_rejects_bad_epochs():
    """`make l1 EPOCHS=abc` stops with a message naming the variable (make -n: a broken guard cannot train)."""
    r = subprocess.run(["make", "-n", "-C", ROOT, "l1", "EPOCHS=abc"], capture_output=True, text=True)
    assert r.returncode != 0 and "EPOCHS=abc must be a positive integer" in r.stderr, r.stderr
    assert "train.py" not in r.stdout


# -----------------------------------------------------------------------------
# Ctrl-C: exit 130 and one line, whenever it comes

def test_ctrl_c_while_starting(tmp_path):
    """Ctrl-C while torch is still importing: exit 130, one line, no traceback."""
    proc = popen("--variant", "none", "--epochs", "1", "--train-limit", "64", "--test-limit", "64", "--device", "cpu",
                 "--data", DATA, "--out", str(tmp_path), "--no-compile")
    started = time.time()
    while not torch_is_loading(proc.pid, started) and proc.poll() is None and time.time() < started + 30:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "epoch  1/" not in out and not (tmp_path / "none.json").exists()


def torch_is_loading(pid, started):
    """torch's library is mapped into the process: train.py is past its first lines and importing torch."""
    try:
        return "libtorch" in open(f"/proc/{pid}/maps").read()
    except OSError:  # no /proc: 0.3 s is well into torch's import
        return time.time() > started + 0.3


def test_ctrl_c_while_training(tmp_path):
    """Ctrl-C after the first epoch: exit 130 with one line that says how to continue; the epoch state stays."""
    proc = popen("--variant", "none", "--epochs", "5", "--train-limit", "640", "--test-limit", "160", "--device", "cpu",
                 "--data", DATA, "--out", str(tmp_path), "--no-compile", *FP32)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    for line in proc.stdout:
        if "epoch  1/5" in line:
            break
    proc.send_signal(signal.SIGINT)
    err = proc.communicate()[1]
    watchdog.cancel()
    assert proc.returncode == 130 and "Traceback" not in err and "--resume" in err, err
    assert len(err.strip().splitlines()) == 1, err


# -----------------------------------------------------------------------------
# torch.compile: used where it works, an eager fall-back (said and recorded) where it does not

def test_compile_falls_back_to_eager_without_a_compiler(tmp_path):
    """No working C++ compiler (and no cached kernels): the run trains eagerly, says so in one line, and the JSON
    records compile false and why."""
    env = {"CXX": "/nonexistent/c++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache")}
    r = subprocess.run([sys.executable, TRAIN_PY, "--variant", "none", "--epochs", "1", "--train-limit", "64",
                        "--test-limit", "64", "--device", "cpu", "--data", DATA, "--out", str(tmp_path)],
                       capture_output=True, text=True, env=dict(os.environ, **env))
    assert r.returncode == 0, r.stderr[-2000:]
    said = [line for line in r.stdout.splitlines() if "torch.compile does not work" in line]
    assert len(said) == 1, r.stdout
    res = json.load(open(tmp_path / "none.json"))
    assert res["config"]["compile"] is False and res["env"]["compile_fallback"]
    assert res["runs"][0]["env"]["compile_fallback"] == res["env"]["compile_fallback"]


def test_fallback_is_recorded_for_every_variant_and_seeds_can_be_added(run_train, tmp_path, monkeypatch):
    """After a fall-back every variant of a pack records compile false, and the same command with another seed
    adds it to the results file instead of refusing it as another config."""
    def no_compiler(*args, **kw):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
    monkeypatch.setattr(torch, "compile", no_compiler)
    args = ["--variant", "none,l1", "--packed", "--epochs", "1", "--train-limit", "64", "--test-limit", "64"]
    code, _ = run_train(*args, "--seeds", "0", compiled=True)
    assert code == 0
    code, _ = run_train(*args, "--seeds", "0,1", compiled=True)
    for name in ("none", "l1"):
        res = json.load(open(tmp_path / f"{name}.json"))
        assert code == 0 and res["config"]["compile"] is False and res["env"]["compile_fallback"]
        assert [r["seed"] for r in res["runs"]] == [0, 1]
