"""Interruption and resume: a killed run resumes exactly, an interrupted run is never discarded silently, and
Ctrl-C and SIGTERM end in one line that says what was kept."""
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import program
import results
import train
from conftest import DATA, FP32, TRAIN_PY, checkpoint, metrics, one_line_error, popen, stop_at_second_save

SMALL = ["--variant", "l1", "--train-limit", "64", "--test-limit", "64", "--device", "cpu", "--data", DATA,
         "--no-compile", *FP32]


def resume_equals_uninterrupted(args, tmp_path, timeout=120):
    """Run train.py ARGS (variant l1, seed 0) as a program, SIGKILL it once its first epoch's state is saved,
    finish it with --resume, run it again uninterrupted: the two must end bit-identical."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, TRAIN_PY, *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = killed / "state" / "l1@0.pt"
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
    wa, wb = (torch.load(checkpoint(tmp_path / d, r["runs"][0]), weights_only=True)
              for d, r in (("killed", resumed), ("whole", whole)))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    """A run killed (SIGKILL) after its first epoch and resumed ends bit-identical to one never interrupted."""
    resume_equals_uninterrupted(["--variant", "l1", "--epochs", "3", "--train-limit", "640", "--test-limit", "160",
                                 "--device", "cpu", "--data", DATA, "--no-compile", *FP32], tmp_path)


@pytest.fixture
def stopped(tmp_path, monkeypatch, capsys):
    """A run stopped by a full disk after its first epoch: (its arguments, its state file, its stderr); no JSON."""
    args = [*SMALL, "--epochs", "2", "--out", str(tmp_path)]
    code = stop_at_second_save(monkeypatch, args)
    assert code == 1 and not (tmp_path / "l1.json").exists()
    return args, tmp_path / "state" / "l1@0.pt", capsys.readouterr().err


def test_full_disk_is_one_line_and_resumable(stopped, capsys):
    """A full disk while training: exit 1, one line naming the file, the problem and --resume; --resume finishes."""
    args, state, err = stopped
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "No space left on device" in err and str(state) in err and "--resume" in err, err
    assert state.exists() and not list(state.parent.glob("*.tmp*"))
    assert train.main([*args, "--resume"]) == 0
    res = json.load(open(state.parent.parent / "l1.json"))
    assert [e["epoch"] for e in res["runs"][0]["epochs"]] == [1, 2] and not state.exists()


def test_same_command_without_resume_refuses_to_start_afresh(stopped, capsys, monkeypatch):
    """An interrupted run's command given again without --resume: exit 2, one line naming the state file, how
    many epochs it holds, --resume and how to start afresh; the state is untouched and nothing trains."""
    args, state, _ = stopped
    before = state.read_bytes()
    monkeypatch.setattr(train.loop, "train_pack", lambda *a, **kw: pytest.fail("trained over an interrupted run"))
    with pytest.raises(SystemExit) as e:
        train.main(args)
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(state) in err and "1 of 2 epochs" in err, err
    assert "--resume" in err and "delete" in err, err
    assert state.read_bytes() == before


def test_resume_with_truncated_state_is_one_line(stopped, capsys):
    """--resume from a truncated state file: exit 2 and one line naming the file, no traceback."""
    args, state, _ = stopped
    blob = state.read_bytes()
    state.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(SystemExit) as e:
        train.main([*args, "--resume"])
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(state) in err and "damaged" in err, err


@pytest.mark.parametrize("change,says", [("device", "device ('cuda' -> 'cpu')"), ("lr", "lr (0.1 -> 0.05)")])
def test_resume_with_other_config_names_what_differs(stopped, capsys, change, says):
    """State saved on another device, or by another config, is refused in one line that names the setting."""
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
    assert e.value.code == 2 and says in err, err


def test_resume_without_state_explains(tmp_path, capsys):
    """--resume with nothing to resume is a one-line error and exit 2."""
    with pytest.raises(SystemExit) as e:
        train.main([*SMALL, "--out", str(tmp_path), "--resume"])
    assert e.value.code == 2 and "no saved state" in one_line_error(capsys)


def test_state_left_by_a_kill_after_the_result_is_swept(tmp_path, monkeypatch, capsys):
    """A kill between writing the JSON and removing the state leaves a state whose result is written: the next
    run removes it (and says so), trains nothing, and leaves the JSON as it was."""
    args = [*SMALL, "--epochs", "1", "--out", str(tmp_path)]
    remove = os.remove
    with monkeypatch.context() as m:  # the kill: the state is never removed
        m.setattr(train.os, "remove", lambda p: None if p.endswith(".pt") and "state" in p else remove(p))
        assert train.main(args) == 0
    state, before = tmp_path / "state" / "l1@0.pt", (tmp_path / "l1.json").read_bytes()
    assert state.exists()
    capsys.readouterr()
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert not state.exists() and "removed" in out and "nothing to train" in out, out
    assert (tmp_path / "l1.json").read_bytes() == before


# -----------------------------------------------------------------------------
# Ctrl-C and SIGTERM: one line that says what was kept, whenever they come

def torch_is_loading(pid, started):
    """torch's library is mapped into the process: train.py is past its first lines and importing torch."""
    try:
        return "libtorch" in open(f"/proc/{pid}/maps").read()
    except OSError:  # no /proc: 0.3 s is well into torch's import
        return time.time() > started + 0.3


def interrupt(tmp_path, sig, after, saved=False):
    """train.py as a program, sent `sig` once a stdout line contains `after` (and, with saved, once the epoch's
    state is on disk): (exit code, stderr, out folder)."""
    out = tmp_path / "out"
    proc = popen("--variant", "none", "--epochs", "5", "--train-limit", "4000", "--test-limit", "160",
                 "--device", "cpu", "--data", DATA, "--out", str(out), "--no-compile", *FP32)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    for line in proc.stdout:
        if after in line:
            break
    while saved and not (out / "state" / "none@0.pt").exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(sig)
    err = proc.communicate()[1]
    watchdog.cancel()
    return proc.returncode, err, out


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_interrupt_after_an_epoch_names_resume(tmp_path, sig, code):
    """Ctrl-C or SIGTERM after the first epoch: one line saying the finished epoch is saved and how to continue;
    the state stays and no temporary file is left."""
    rc, err, out = interrupt(tmp_path, sig, "epoch  1/5", saved=True)
    assert rc == code and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "finished epochs are saved in" in err and "--resume" in err, err
    assert (out / "state" / "none@0.pt").exists() and not list(out.rglob("*.tmp*"))


def test_ctrl_c_before_the_first_epoch_ends_promises_nothing(tmp_path):
    """Ctrl-C during the first epoch: one line saying nothing is there to resume, not that epochs are saved."""
    rc, err, out = interrupt(tmp_path, signal.SIGINT, "training 1 model")
    assert rc == 130 and len(err.strip().splitlines()) == 1, err
    assert "nothing to resume" in err and "--resume" not in err, err
    assert not (out / "state" / "none@0.pt").exists()


def test_a_pack_stopped_between_its_results_files_resumes_whole(tmp_path, monkeypatch, capsys):
    """A full disk after none.json but before l1.json of a packed none,l1 run: the state stays, the same command
    refuses without --resume, and --resume writes l1 (and none again, identical) as an uninterrupted run does."""
    args = ["--variant", "none,l1", "--seeds", "0,1", "--packed", *SMALL[2:], "--epochs", "2"]
    save, calls = results.save, []

    def second_file_fails(folder, name, result, weights):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(folder, f"{name}.json"))
        save(folder, name, result, weights)
    with monkeypatch.context() as m:
        m.setattr(results, "save", second_file_fails)
        with pytest.raises(SystemExit):
            train.main([*args, "--out", str(tmp_path / "a")])
    state = tmp_path / "a" / "state" / "none@0,1+l1@0,1.pt"
    assert (tmp_path / "a" / "none.json").exists() and not (tmp_path / "a" / "l1.json").exists() and state.exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train.main([*args, "--out", str(tmp_path / "a")])
    assert e.value.code == 2 and str(state) in one_line_error(capsys)
    assert train.main([*args, "--out", str(tmp_path / "a"), "--resume"]) == 0 and not state.exists()
    assert train.main([*args, "--out", str(tmp_path / "b")]) == 0
    for name in ("none", "l1"):
        resumed, whole = (json.load(open(tmp_path / d / f"{name}.json")) for d in "ab")
        assert metrics(resumed) == metrics(whole), name


def test_signals_wait_for_a_packs_results_files():
    """SIGTERM inside signals_held() acts only when the block is done: no interruption between the files."""
    old, done = signal.signal(signal.SIGTERM, program.on_sigterm), []
    try:
        with pytest.raises(program.Terminated):
            with program.signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                done.append("all files written")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert done == ["all files written"]


@pytest.mark.parametrize("change", [["--seeds", "0"], ["--seeds", "0,1,2", "--packed"], ["--seeds", "1,0", "--packed"]],
                         ids=["unpacked", "a seed added", "reordered"])
def test_another_pack_over_an_interrupted_one_is_refused(tmp_path, monkeypatch, capsys, change):
    """A packed run of seeds 0,1 stopped after epoch 1, then a command that would train some of its seeds in
    another pack: with or without --resume, exit 2 and one line naming the state file; the state stays."""
    base = [*SMALL, "--epochs", "2", "--out", str(tmp_path)]
    assert stop_at_second_save(monkeypatch, [*base, "--seeds", "0,1", "--packed"]) == 1
    state = tmp_path / "state" / "l1@0,1.pt"
    before = state.read_bytes()
    capsys.readouterr()
    for resume in ([], ["--resume"]):
        with pytest.raises(SystemExit) as e:
            train.main([*base, *change, *resume])
        err = one_line_error(capsys)
        assert e.value.code == 2 and str(state) in err and "--resume" in err, err
    assert state.read_bytes() == before
