"""The data-size study: class-balanced subsets paired across variants, the same step budget for every size, the λ
rule on the validation split, and a study that resumes where it stopped."""
import contextlib
import fcntl
import json
import os
import signal
import time

import pytest
import torch

import data
import datasize
import findings
import loop
import plot
import report
import results
import rules
import train
import verify
from conftest import DATA, FP32, ROOT, make_result, metrics, popen, stop_at_second_save

TINY = ["--steps", "12", "--epochs", "3", "--test-limit", "64", *FP32]
SHRUNK = ["--test-limit", "64", "--no-compile", *FP32]


def test_subset_is_class_balanced_and_never_validation(mnist):
    """N/10 distinct images of every class, all among the first 50,000 training images."""
    idx = data.balanced_subset(mnist[1][:50000], 1000, torch.Generator().manual_seed(7))
    assert len(idx) == len(set(idx.tolist())) == 1000 and idx.max() < 50000 and torch.equal(idx, idx.sort().values)
    assert torch.bincount(mnist[1][idx].long(), minlength=10).tolist() == [100] * 10


@pytest.mark.parametrize("n", ["46000", "1005", "70000"])
def test_a_subset_the_data_cannot_give_is_refused_at_once(tmp_path, capsys, n):
    """More than the rarest class allows (4,506 fives among the first 50,000), not a multiple of 10, or above
    the whole set: exit 2, one line, before anything is loaded."""
    with pytest.raises(SystemExit) as e:
        train.main(["--variant", "none", "--train-subset", n, "--data", DATA, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "multiple of 10 up to 45,060" in err[-1] and len(err) <= 2, err
    assert not (tmp_path / "o").exists()


def test_balanced_subset_says_which_class_runs_short(mnist):
    """Asking the data for more of a class than it has names the class and both counts."""
    with pytest.raises(ValueError, match="needs 4,600 images of class 5; there are 4,506"):
        data.balanced_subset(mnist[1][:50000], 46000, torch.Generator())


def test_variants_of_one_seed_share_their_subset(run_train, tmp_path):
    """In one pack, none and l1 of seed 0 train on the same subset (same hash), seed 1 on another; the JSON records
    train_subset and the number of images."""
    code, none = run_train("--variant", "none,l1", "--packed", "--seeds", "0,1", "--train-subset", "200", *TINY)
    l1 = json.load(open(tmp_path / "l1.json"))
    hashes = [[r["train_subset_sha256"] for r in res["runs"]] for res in (none, l1)]
    assert code == 0 and hashes[0] == hashes[1] and hashes[0][0] != hashes[0][1]
    assert none["config"]["train_subset"] == 200 and none["runs"][0]["train_images"] == 200
    want = data.indices_sha256(train.subsets_for(train.Config(train_subset=200), [0], data.load_mnist(DATA)[1])[0])
    assert hashes[0][0] == want


def test_every_size_takes_the_same_steps(run_train, tmp_path, monkeypatch):
    """--steps 12 --epochs 3: 12 optimizer steps of full batches whatever the subset's size, evaluated after steps
    4, 8 and 12 (recorded), the one-cycle schedule annealed by the last step."""
    calls = []
    step_loss = loop.step_loss
    monkeypatch.setattr(loop, "step_loss", lambda net, x, *a: calls.append(len(x)) or step_loss(net, x, *a))
    for size in (100, 1000):
        calls.clear()
        code, res = run_train("--variant", "none", "--train-subset", str(size), *TINY, out=tmp_path / str(size))
        run = res["runs"][0]
        assert code == 0 and calls == [32] * 12, (size, calls)
        assert [e["step"] for e in run["epochs"]] == [4, 8, 12] and run["epochs"][-1]["lr"] < 0.05 * 0.1


def test_steps_resume_exactly(tmp_path, monkeypatch):
    """A steps run stopped after its first segment (full disk) and resumed equals one never stopped: the part of
    a pass not yet used is saved with the state."""
    args = ["--variant", "none", "--train-subset", "100", "--steps", "18", "--epochs", "3", "--test-limit", "64",
            "--device", "cpu", "--data", DATA, "--no-compile", *FP32]
    assert stop_at_second_save(monkeypatch, [*args, "--out", str(tmp_path / "a")]) == 1
    assert train.main([*args, "--out", str(tmp_path / "a"), "--resume"]) == 0
    assert train.main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.load(open(tmp_path / d / "none.json")) for d in "ab")
    assert metrics(a) == metrics(b)


def val_run(variant, lam, accs, epochs=15):
    """A validation result as rules.datasize_choice reads it: final accuracies per seed."""
    cfg = {"variant": variant, "l1": lam if variant == "l1" else 0.0, "l2": lam if variant == "l2" else 0.0,
           "norm": "bn", "val": True, "epochs": epochs, "seeds": [0, 1, 2], "train_subset": 1000, "steps": 9375}
    runs = [{"seed": s, "status": "ok", "final_test_acc": a, "epochs": [{"test_loss": 0.1}]} for s, a in enumerate(accs)]
    return {"variant": variant, "config": cfg, "runs": runs}


def test_lambda_rule_ties_go_to_the_smaller_lambda():
    """Highest mean validation accuracy wins; λ's within 0.05 points of it are tied and the smallest wins."""
    grid = {"l1": [1e-4, 1e-3], "l2": [1e-3, 1e-2]}
    runs = {"none": val_run("none", 0, [97.0, 97.0, 97.0]),
            "a": val_run("l1", 1e-4, [97.00, 97.00, 97.00]), "b": val_run("l1", 1e-3, [97.04, 97.04, 97.04]),
            "c": val_run("l2", 1e-3, [97.00, 97.00, 97.00]), "d": val_run("l2", 1e-2, [97.20, 97.20, 97.20])}
    entry = rules.datasize_choice(runs, grid)
    assert entry["chosen"] == {"l1": 1e-4, "l2": 1e-2}, entry["chosen"]
    assert entry["reference"]["val_acc_mean"] == pytest.approx(97.0) and len(entry["points"]) == 4


@pytest.mark.parametrize("broken,message", [("test run", "not a validation run"), ("epochs", "has epochs 10"),
                                            ("grid", "are not the grid")])
def test_lambda_rule_checks_its_inputs(broken, message):
    """A test run, a run of other length, or a grid that did not run is refused before anything is chosen."""
    grid = {"l1": [1e-4], "l2": [1e-3]}
    runs = {"none": val_run("none", 0, [97.0] * 3), "a": val_run("l1", 1e-4, [97.0] * 3),
            "b": val_run("l2", 1e-3, [97.0] * 3)}
    if broken == "test run":
        runs["a"]["config"]["val"] = False
    elif broken == "epochs":
        runs["b"] = val_run("l2", 1e-3, [97.0] * 3, epochs=10)
    else:
        grid["l2"] = [1e-3, 1e-2]
    with pytest.raises(ValueError, match=message):
        rules.datasize_choice(runs, grid)


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    """datasize.py shrunk to one size of 100 images, 12 steps, a 1-point grid per penalty, 64 test images."""
    monkeypatch.setattr(datasize, "SIZES", [100])
    monkeypatch.setattr(datasize, "STEPS", 12)
    monkeypatch.setattr(datasize, "POINTS", 3)
    monkeypatch.setattr(datasize, "GRID", {"l1": [1e-3], "l2": [1e-2]})
    study_args = datasize.study_args  # and evaluated on 64 images, eagerly, in fp32: fixed by the study, like its steps
    monkeypatch.setattr(datasize, "study_args", lambda size, seeds: [*study_args(size, seeds), *SHRUNK])
    monkeypatch.setattr(datasize, "choice_committed", lambda folder, size: True)  # tmp_path is outside the repository
    monkeypatch.setattr(datasize, "spawn", InProcess)  # no torch import per run; the child's signals are tested below
    return ["--data", DATA, "--device", "cpu", "--results", str(tmp_path)]


class InProcess:
    """train.py run in this process, with the face of the Popen datasize.spawn returns."""
    def __init__(self, args, env=None):
        try:
            self.returncode = train.main(args)
        except SystemExit as e:
            self.returncode = e.code

    def poll(self):
        return self.returncode


def test_the_study_runs_its_steps_in_order_and_skips_what_is_done(tiny_study, tmp_path, capfd):
    """`all`: the validation runs, the choice (choice.json), then the four variants x five seeds with the chosen
    λ's, which verify.py finds to agree with each other; run again, it trains nothing and changes no file."""
    datasize.main(["all", *tiny_study])
    assert verify.main(["--results", str(tmp_path), "--data", DATA]) in (None, 0)
    choice = json.load(open(tmp_path / "datasize" / "choice.json"))["sizes"]["100"]
    assert set(choice["chosen"]) == {"l1", "l2"} and choice["rule"] == rules.DATASIZE_RULE
    for variant in ("none", "l1", "l2", "l1l2"):
        res = results.load(str(tmp_path / "datasize" / "n100" / f"{variant}.json"))
        assert [r["seed"] for r in res["runs"]] == [0, 1, 2, 3, 4] and not res["config"]["val"]
        assert res["config"]["l1"] == (choice["chosen"]["l1"] if "l1" in variant else 0)
    before = {p: p.read_bytes() for p in (tmp_path / "datasize").rglob("*.json")}
    capfd.readouterr()
    datasize.main(["all", *tiny_study])
    out = capfd.readouterr().out
    assert "python train.py" not in out and "nothing to train: every pack is already done" in out, out
    assert {p: p.read_bytes() for p in (tmp_path / "datasize").rglob("*.json")} == before


def test_a_committed_choice_is_never_replaced(tiny_study, tmp_path):
    """choose on other validation numbers than those behind an existing entry: one line, the entry stays."""
    datasize.search_lambdas(str(tmp_path / "datasize"), 100, tiny_study[:4])
    datasize.choose(str(tmp_path / "datasize"), 100)
    path = tmp_path / "datasize" / "choice.json"
    doc = json.load(open(path))
    doc["sizes"]["100"]["chosen"]["l1"] = 1.0  # as if chosen from other runs
    results.write_json(str(path), doc)
    with pytest.raises(results.ResultsError, match="already holds another choice for n100"):
        datasize.choose(str(tmp_path / "datasize"), 100)
    assert json.load(open(path)) == doc


def test_an_interrupted_size_is_continued(tiny_study, tmp_path, monkeypatch, capfd):
    """A test pack stopped after its first segment (full disk) leaves its state; the next `all` continues it
    with --resume (and says so) and ends where an uninterrupted pack ends."""
    datasize.search_lambdas(str(tmp_path / "datasize"), 100, tiny_study[:4])
    datasize.choose(str(tmp_path / "datasize"), 100)
    chosen = json.load(open(tmp_path / "datasize" / "choice.json"))["sizes"]["100"]["chosen"]
    out = tmp_path / "datasize" / "n100"
    argv = [*datasize.test_args({"chosen": chosen}, 100), "--out", str(out), *tiny_study[:4]]
    assert stop_at_second_save(monkeypatch, argv) == 1
    assert (out / "state").exists() and list((out / "state").glob("*.pt"))
    capfd.readouterr()
    datasize.main(["all", *tiny_study])
    assert "continuing the interrupted run" in capfd.readouterr().out
    assert train.main([*argv[:-6], "--out", str(tmp_path / "whole"), *tiny_study[:4]]) == 0
    for variant in ("none", "l1l2"):
        resumed, whole = (json.load(open(d / f"{variant}.json")) for d in (out, tmp_path / "whole"))
        assert metrics(resumed) == metrics(whole), variant


def test_the_study_stops_for_each_choice_to_be_committed(tiny_study, tmp_path, monkeypatch, capsys):
    """`all` chooses λ for a size, then refuses its test runs in one line until the choice is committed."""
    monkeypatch.setattr(datasize, "choice_committed", lambda folder, size: False)
    with pytest.raises(SystemExit) as e:
        datasize.main(["all", *tiny_study])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "not committed" in err[-1] and "commit it" in err[-1], err
    assert (tmp_path / "datasize" / "choice.json").exists() and not (tmp_path / "datasize" / "n100").exists()


def test_figure_and_report_section_show_the_study(tmp_path, mnist):
    """With test runs of two sizes under datasize/, plot.py draws datasize.png and REPORT.md gains a section whose
    numbers are the JSON's: per size and variant the mean [min, max] final accuracy and the paired difference
    from none with its 95% t-interval."""
    for size, shift in ((1000, 0.0), (5000, 0.5)):
        folder = tmp_path / "datasize" / f"n{size}"
        folder.mkdir(parents=True)
        make_result(folder, "none", {0: 97.0 + shift, 1: 97.5 + shift}, mnist)
        make_result(folder, "l2", {0: 97.5 + shift, 1: 98.5 + shift}, mnist, l2=1e-3)
    make_result(tmp_path, "none", {0: 99.4, 1: 99.3}, mnist)  # the main study beside it
    plot.main(["--results", str(tmp_path), "--data", DATA])
    report.main(["--results", str(tmp_path)])
    assert (tmp_path / "datasize.png").read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "REPORT.md").read_text()
    # l2 - none on seeds 0, 1: +0.5, +1.0 -> +0.75 +- 12.706 * 0.3536 / sqrt(2)
    assert "| 1,000 | l2 | 2 | 98.00 [97.50, 98.50] | +0.75 [-2.43, +3.93] |" in text, text
    assert "| 5,000 | none | 2 | 97.75 [97.50, 98.00] | – |" in text, text


def test_findings_per_size_follow_the_holm_verdicts():
    """The finding per size groups the penalties by their verdict under Holm's correction, not by the raw
    interval: a raw interval that excludes 0 but a Holm-adjusted p above 0.05 reads "not distinguishable"."""
    def row(variant, acc, loss, size=1000):
        r = {"size": size, "variant": variant, "passes": 300 if size == 1000 else 60}
        for key, v in (("acc", acc), ("loss", loss)):
            r |= dict(zip([f"{key}_{k}" for k in ("diff", "lo", "hi", "p", "p_holm", "verdict")], v or [None] * 6))
        return r
    rows = [row("none", None, None),
            row("l1", (-0.06, -0.41, 0.28, 0.65, 1.0, "is not distinguishable from none"),
                (0.02, 0.01, 0.03, 0.004, 0.04, "is worse than none")),
            row("l2", (0.27, 0.04, 0.5, 0.029, 0.32, "is not distinguishable from none"),
                (-0.036, -0.051, -0.022, 0.002, 0.027, "beats none")),
            row("l2", (0.03, -0.02, 0.08, 0.2, 0.2, "is equal to none within ±0.1"), None, size=5000)]
    assert findings.datasize_findings(rows) == [
        "- **1,000 images** (300 passes). Accuracy: l1 -0.06 [-0.41, +0.28] (p 0.650, Holm 1.000), l2 +0.27 [+0.04, "
        "+0.50] (p 0.029, Holm 0.320) are not distinguishable from none. Loss: l1 +0.0200 [+0.0100, +0.0300] "
        "(p 0.004, Holm 0.040) is worse than none; l2 -0.0360 [-0.0510, -0.0220] (p 0.002, Holm 0.027) beats none.",
        "- **5,000 images** (60 passes). Accuracy: l2 +0.03 [-0.02, +0.08] (p 0.200, Holm 0.200) is equal to none "
        "within ±0.1."]


@pytest.mark.parametrize("flag", [["--l2", "0.1"], ["--train-subset", "5000"], ["--steps", "20"], ["--seeds", "0"],
                                  ["--out", "elsewhere"], ["--name", "x"], ["--resume"], ["--test-limit", "64"]])
def test_flags_that_change_the_study_are_refused(tmp_path, capsys, flag):
    """`datasize.py test 1000` with a flag that would replace what the study fixes: exit 2, one line naming the
    flag, nothing written."""
    with pytest.raises(SystemExit) as e:
        datasize.main(["test", "1000", *flag, "--results", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and flag[0] in err[0] and "what the study fixes" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,message", [(["test", "999"], "not one of the study's sizes"), (["all", "1000"], "takes no SIZE"),
                                          (["lambdas"], "needs a SIZE"), (["fit", "1000"], "invalid choice"),
                                          (["test", "1000", "--results"], "expected one argument")])
def test_bad_datasize_command_is_one_line(tmp_path, capsys, argv, message):
    """A size the study does not have, a missing or extra SIZE, an unknown step: exit 2, one line."""
    with pytest.raises(SystemExit) as e:
        datasize.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[0], err


def datasize_with_child(tmp_path):
    """`datasize.py lambdas 1000` as a program, once its train.py child runs: (process, the child's pid)."""
    proc = popen("lambdas", "1000", "--results", str(tmp_path), "--device", "cpu", "--data", DATA,
                 script=os.path.join(ROOT, "datasize.py"))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            kids = [int(k) for k in f.read().split() if "train.py" in cmdline(k)]  # not a helper torch's import runs
        if kids:
            time.sleep(1.0)  # datasize.py is in its wait, with its handlers set
            return proc, kids[0]
        time.sleep(0.05)
    raise AssertionError(f"no train.py child within 120 s: {proc.communicate()}")


def cmdline(pid):
    """A process's command line, or "" once it has gone."""
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def alive(pid, within=30.0):
    """Whether pid still runs (not a zombie) after waiting up to `within` seconds for it to end."""
    deadline = time.time() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] == "Z":
                    return False
        except FileNotFoundError:
            return False
        if time.time() >= deadline:
            return True
        time.sleep(0.1)


@pytest.mark.parametrize("sig,to_child,code,said", [(signal.SIGTERM, False, 143, "SIGTERM"),
                                                    (signal.SIGINT, True, 130, "exited 130")])
def test_a_signal_stops_the_train_py_child(tmp_path, sig, to_child, code, said):
    """SIGTERM to datasize.py is passed on to its train.py child; Ctrl-C (SIGINT to both, as a terminal sends it)
    reaches the child, which is not left ignoring it. Both end, datasize.py with exit 143 / 130 and one line."""
    proc, child = datasize_with_child(tmp_path)
    try:
        proc.send_signal(sig)
        if to_child:
            os.kill(child, sig)
        _, err = proc.communicate(timeout=120)
        assert not alive(child), f"train.py {child} still runs after datasize.py ended ({proc.returncode}): {err}"
        assert proc.returncode == code and said in err.strip().splitlines()[-1], err
    finally:
        if alive(child, within=0):
            os.kill(child, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


class Holder:
    """A train.py as run_packs sees it: holds its results file's lock until its last poll (life[name] polls)."""
    def __init__(self, args, env=None):
        self.name, self.polls, self.returncode = args[0], 0, None
        self.lock = open(os.path.join(args[2], f"{args[1]}.lock"), "a")
        fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        Holder.log.append(("start", self.name))

    def poll(self):
        self.polls += 1
        if self.polls >= Holder.life[self.name] and self.returncode is None:
            self.lock.close()
            self.returncode = 0
            Holder.log.append(("end", self.name))
        return self.returncode


def fake_packs(tmp_path, monkeypatch, life):
    """Packs (run name, its results file) for run_packs, trained by Holders; returns (packs, sleeps)."""
    Holder.log, Holder.life, sleeps = [], life, []
    monkeypatch.setattr(datasize, "spawn", Holder)
    monkeypatch.setattr(datasize.time, "sleep", sleeps.append)
    return lambda run, file: ([run, file, str(tmp_path)], str(tmp_path), [file], [0]), sleeps


def test_the_driver_fills_a_free_place_at_once(tmp_path, monkeypatch):
    """With two places, when a short pack ends the next free pack starts beside the long one, while a pack of the
    long one's file waits for it (its lock is this driver's own child's, not another process's); the driver never
    sleeps more than half a second at a time while a pack runs."""
    pack, sleeps = fake_packs(tmp_path, monkeypatch, {"a1": 6, "b": 2, "a2": 2, "c": 2})
    datasize.run_packs([pack("a1", "a"), pack("b", "b"), pack("a2", "a"), pack("c", "c")], processes=2)
    log = Holder.log
    assert log.index(("start", "c")) < log.index(("end", "a1")) < log.index(("start", "a2")), log
    assert set(sleeps) == {0.5} and len(sleeps) < 20, sleeps  # one per poll: no 30 s wait


@contextlib.contextmanager
def sigint(handler):
    """SIGINT set to handler for the block, whatever the shell running pytest left it at (a background job's
    shell, as CI's may be, ignores it)."""
    usual = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, usual)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_driver_with_no_child_running(tmp_path, monkeypatch, sig, code):
    """While the driver waits for a pack another process trains, Ctrl-C or SIGTERM ends it (exit 130 / 143) and
    nothing starts."""
    pack, _ = fake_packs(tmp_path, monkeypatch, {"a": 1})
    other = open(tmp_path / "a.lock", "a")
    fcntl.flock(other, fcntl.LOCK_EX)
    calls = []

    def sleep(seconds):  # the signal arrives while the driver sleeps
        calls.append(seconds)
        assert len(calls) < 200, "the driver went on waiting after the signal"
        os.kill(os.getpid(), sig)
    monkeypatch.setattr(datasize.time, "sleep", sleep)
    with sigint(signal.default_int_handler), pytest.raises(datasize.Stop) as e:  # Ctrl-C as a terminal has it
        datasize.run_packs([pack("a", "a")])
    other.close()
    assert e.value.code == code and Holder.log == [], (e.value.code, Holder.log)


def test_a_driver_started_with_sigint_ignored_leaves_it_ignored(tmp_path, monkeypatch):
    """A driver started as a background job (SIGINT ignored, as a shell starts one) keeps it ignored: its train.py
    children inherit that, so the terminal's Ctrl-C meant for the foreground job stops none of them."""
    pack, _ = fake_packs(tmp_path, monkeypatch, {"a": 1})
    seen = []
    monkeypatch.setattr(datasize, "spawn", lambda args, env=None: seen.append(signal.getsignal(signal.SIGINT))
                        or Holder(args, env))
    with sigint(signal.SIG_IGN):
        datasize.run_packs([pack("a", "a")])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert seen == [signal.SIG_IGN] and Holder.log == [("start", "a"), ("end", "a")], (seen, Holder.log)


def test_a_child_killed_by_a_signal_is_named(tmp_path):
    """kill -9 of the train.py child: datasize.py names SIGKILL and exits 137, as a shell reports it."""
    proc, child = datasize_with_child(tmp_path)
    os.kill(child, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 137 and "killed by SIGKILL" in err.strip().splitlines()[-1], (proc.returncode, err)


def test_a_subset_run_draws_from_the_first_50000_images_in_both_splits(run_train, tmp_path, mnist):
    """train.py wires the subset in as datasize.py relies on: a test run and a --val run of one seed train on the
    same images, those draw_subsets gives from the first 50,000 training images (never a validation image)."""
    args = ["--variant", "none", "--train-subset", "100", "--steps", "2", "--epochs", "1", "--test-limit", "64", *FP32]
    _, test = run_train(*args, out=tmp_path / "test")
    _, val = run_train(*args, "--val", out=tmp_path / "val")
    want = data.indices_sha256(data.draw_subsets(mnist[1][:50000], 100, [0])[0])
    assert test["runs"][0]["train_subset_sha256"] == val["runs"][0]["train_subset_sha256"] == want
    assert test["runs"][0]["train_images"] == 100
