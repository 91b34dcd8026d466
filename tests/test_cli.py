"""The command line: every bad input is one line and exit 2 before anything trains or is written; the Makefile
checks its variables the same way."""
import os
import subprocess
import sys

import pytest
import torch

import data
import train
from conftest import DATA, ROOT, TRAIN_PY, one_line_error, popen


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
    (["--variant", "l1", "--dropout", "1"], "must be a number >= 0 and < 1", True),
    (["--variant", "l1", "--warmup", "1"], "must be a number > 0 and < 1", True),
    (["--variant", "l1", "--device", "tpu"], "invalid choice: 'tpu'", True),
    (["--variant", "l1", "--dtype", "float64"], "needs --precision fp32", True),
    (["--variant", "l1,gbn", "--packed"], "one kind of norm", True),
    (["--variant", "none_normmatch"], "train it together with l2: --variant l2,none_normmatch --packed", True),
    (["--variant", "l2,none_normmatch"], "train it together with l2: --variant l2,none_normmatch --packed", True),
    (["--variant", "l1", "--train-limit", "0"], "must be an integer > 0", True),
    (["--variant", "l1", "--name", "../x"], "must be 1-100 letters, digits", True),
    (["--variant", "l1", "--name", "x" * 300], "must be 1-100 letters, digits", True),
    (["--variant", "l1", "--name", "l1+l2"], "must be 1-100 letters, digits", True),
    (["--variant", "l1,l2", "--name", "x"], "goes with one variant", True),
    (["--variant", "none", "--name", "recipe"], "'recipe' is reserved by the results folder", True),
    (["--variant", "none", "--name", "sweep"], "'sweep' is reserved by the results folder", True),
    (["--variant", "l1", "--dropout", "0.999"], "rounds to 256/256 with --dropout-masks bytes", True),
    (["--variant", "l2", "--name", "none"], "'none' names the variant none", True),
    (["--variant", "l1", "--out", ""], "an empty path would mean the current folder", True),
    (["--variant", "l1", "--lr", "1e39"], "must be a finite number > 0", True),
    (["--variant", "l1", "--no-cycle-momentum", "--momentum", "1e308"], "must be a finite number >= 0", True),
    (["--variant", "l1", "--train-limit", "70000"], "larger than the 60,000 images", True),
    (["--variant", "l1", "--val", "--train-limit", "50001"], "larger than the 50,000 images", True),
    (["--variant", "l1", "--test-limit", "20000"], "larger than the 10,000 images", True),
    (["--variant", "l1", "--test-limit", "10001"], "larger than the 10,000 images", True),
    (["--variant", "l1", "--data", "/nonexistent/mnist"], "is not a directory", False),
    (["--variant", "l1", "--out", "/proc/no/such"], "cannot write to --out", False),
]


@pytest.mark.parametrize("args,message,at_parse", BAD, ids=[" ".join(a)[:60] for a, _, _ in BAD])
def test_bad_input_is_a_one_line_error(args, message, at_parse, capsys, tmp_path, monkeypatch):
    """Every bad input ends with exit 2 and one line naming the problem, no traceback, before any training."""
    monkeypatch.setattr(train.loop, "train_pack", lambda *a, **kw: pytest.fail("bad input reached training"))
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
    monkeypatch.setattr(train.loop, "train_pack", lambda *a, **kw: pytest.fail("broken data reached training"))
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


@pytest.mark.parametrize("jobs", [2, 1])
def test_make_all_trains_jobs_variants_at_once_with_their_share_of_the_cores(jobs):
    """`make all` runs JOBS variant targets at once, each train.py with cores / JOBS threads (at least one), which
    reach it as OMP_NUM_THREADS; one job leaves torch's own default. A JOBS or TRAIN_THREADS that is no positive
    integer is refused."""
    r = subprocess.run(["make", "-n", "-C", ROOT, "all", f"JOBS={jobs}"], capture_output=True, text=True)
    threads = max(1, len(os.sched_getaffinity(0)) // jobs) if jobs > 1 else ""  # the cores nproc counts
    assert r.returncode == 0 and f"-j{jobs} none l1 l2 l1l2 gbn gbn_l1l2 TRAIN_THREADS={threads}\n" in r.stdout, r.stdout
    r = subprocess.run(["make", "-n", "-C", ROOT, "l1", "TRAIN_THREADS=3"], capture_output=True, text=True)
    assert "\nOMP_NUM_THREADS=3 .venv/bin/python train.py --variant l1" in r.stdout, r.stdout
    r = subprocess.run(["make", "-n", "-C", ROOT, "l1"], capture_output=True, text=True)
    assert "\n.venv/bin/python train.py --variant l1" in r.stdout, r.stdout
    for bad in ("JOBS=0", "TRAIN_THREADS=x"):
        r = subprocess.run(["make", "-n", "-C", ROOT, "all", bad], capture_output=True, text=True)
        assert r.returncode != 0 and f"{bad} must be a positive integer" in r.stderr, r.stderr


def test_a_pack_too_large_for_memory_is_refused(tmp_path, capsys, monkeypatch):
    """A pack whose estimated memory exceeds what the machine has is refused before training, in one line that
    states the estimate."""
    monkeypatch.setattr(train, "available_memory", lambda: 2e9)
    monkeypatch.setattr(train.loop, "train_pack", lambda *a, **kw: pytest.fail("an oversized pack reached training"))
    with pytest.raises(SystemExit) as e:
        train.main(["--variant", "none", "--seeds", ",".join(map(str, range(20))), "--packed", "--data", DATA,
                    "--out", str(tmp_path), "--no-compile", "--train-limit", "64", "--test-limit", "64"])
    err = one_line_error(capsys)
    assert e.value.code == 2 and "20 models need ~2.7 GB" in err and "87 MB per model" in err and "2.0 GB" in err, err


@pytest.mark.parametrize("value", ["data", "data/", "data/MNIST", os.path.join(ROOT, "data")])
def test_make_refuses_results_in_the_mnist_folder(value):
    """`make l1 RESULTS=data` (or a folder inside data/) stops before any command runs: runs never go into MNIST's
    folder."""
    r = subprocess.run(["make", "-n", "-C", ROOT, "l1", f"RESULTS={value}"], capture_output=True, text=True)
    assert r.returncode != 0 and "is MNIST's folder data/" in r.stderr, r.stderr
    assert "train.py" not in r.stdout


def test_an_ascii_terminal_gets_the_results_line(tmp_path):
    """With PYTHONIOENCODING=ascii, train.py prints its mean ± std line escaped and exits 0, not a traceback."""
    r = subprocess.run([sys.executable, TRAIN_PY, "--variant", "none", "--epochs", "1", "--train-limit", "64",
                        "--test-limit", "64", "--seeds", "0,1", "--precision", "fp32", "--no-compile", "--device", "cpu",
                        "--data", DATA, "--out", str(tmp_path)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "\\xb1" in r.stdout and "-> " in r.stdout, r.stdout


@pytest.mark.parametrize("value", ["", "results/try run", "/"])
def test_make_rejects_bad_results_folder(value):
    """`make clean RESULTS=` and friends stop with a message naming RESULTS before any command runs (make -n)."""
    r = subprocess.run(["make", "-n", "-C", ROOT, "clean", f"RESULTS={value}"], capture_output=True, text=True)
    assert r.returncode != 0 and f"RESULTS='{value}' must be a folder path" in r.stderr, r.stderr
    assert "rm " not in r.stdout


def test_a_validation_run_never_joins_test_runs(run_train, tmp_path, capsys):
    """--val into a folder of test runs (or a test run into a folder of --val runs): exit 2, one line naming the
    folder and --out, before anything trains; the folder stays readable by the reports."""
    assert run_train("--variant", "none", "--epochs", "1", "--train-limit", "64", "--test-limit", "64")[0] == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_train("--variant", "l1", "--val", "--epochs", "1", "--train-limit", "64", "--test-limit", "64", name="l1")
    err = one_line_error(capsys)
    assert e.value.code == 2 and "holds test runs" in err and "--out" in err, err
    assert not (tmp_path / "l1.json").exists()


def signal_while_torch_imports(proc, sig):
    """Send sig to a just-started program once torch's library is being loaded: (exit code, stderr)."""
    from test_resume import torch_is_loading
    import time
    started = time.time()
    while not torch_is_loading(proc.pid, started) and proc.poll() is None and time.time() < started + 30:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


STARTING = [("plot.py", ["--results"], "SIGINT"), ("report.py", ["--results"], "SIGINT"),
            ("verify.py", ["--results"], "SIGINT"), ("datasize.py", ["choose", "1000", "--results"], "SIGINT"),
            ("confirm.py", ["plan", "--results"], "SIGINT"),
            ("train.py", ["--variant", "none", "--epochs", "1", "--train-limit", "64", "--data", DATA, "--out"], "SIGINT"),
            ("train.py", ["--variant", "none", "--epochs", "1", "--train-limit", "64", "--data", DATA, "--out"], "SIGTERM")]


@pytest.mark.parametrize("script,args,sig", STARTING, ids=[f"{s} {g}" for s, _, g in STARTING])
def test_a_signal_while_starting_is_one_line(tmp_path, script, args, sig):
    """Ctrl-C (exit 130) or SIGTERM (143) while torch is still importing, in every program that trains, reads or
    grows a results folder: one line naming the program, no traceback, nothing written."""
    import signal
    signum = getattr(signal, sig)
    code, err = signal_while_torch_imports(popen(*args, str(tmp_path), script=os.path.join(ROOT, script)), signum)
    assert code == 128 + signum and err.strip() == f"{script}: interrupted while starting; nothing was written", err
    assert os.listdir(tmp_path) == []
