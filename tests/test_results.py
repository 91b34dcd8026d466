"""Results files: a run never destroys another's results, a checkpoint and its JSON change as one unit, a damaged
file is a one-line error, and the summaries say what they can."""
import errno
import json
import os

import pytest
import torch

import results
import train
from conftest import DATA, checkpoint

FAST = ["--epochs", "1", "--train-limit", "64", "--test-limit", "64", "--precision", "fp32"]


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def snapshot(folder):
    """{file name: bytes} of every file directly in folder."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def never_train(monkeypatch):
    monkeypatch.setattr(train, "train_pack", lambda *a, **kw: pytest.fail("trained although it must not"))


# -----------------------------------------------------------------------------
# merging into an existing results file

def test_another_config_is_refused_and_nothing_changes(run_train, tmp_path, capsys, monkeypatch):
    """`make l1 EPOCHS=1` over a finished run: exit 2, one line naming the file and the ways out; the old JSON
    and its checkpoint are untouched, byte for byte."""
    code, old = run_train("--variant", "l1", *FAST, name="l1")
    assert code == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    never_train(monkeypatch)
    with pytest.raises(SystemExit) as e:
        run_train("--variant", "l1", *FAST, "--epochs", "2", name="l1")
    err = one_line_error(capsys)
    assert e.value.code == 2, err
    assert str(tmp_path / "l1.json") in err and "epochs (1 -> 2)" in err, err
    assert all(way in err for way in ("--name", "--out", "--overwrite")), err
    assert snapshot(tmp_path) == before
    assert os.path.exists(checkpoint(old["runs"][0]))


def test_overwrite_replaces_a_run_with_another_config(run_train, tmp_path):
    """--overwrite replaces the old results file: the new config, the new numbers, no checkpoint of the old run."""
    _, old = run_train("--variant", "l1", *FAST, name="l1")
    code, new = run_train("--variant", "l1", *FAST, "--lr", "0.05", "--overwrite", name="l1")
    assert code == 0 and new["config"]["lr"] == 0.05 and [r["seed"] for r in new["runs"]] == [0]
    assert new["runs"][0]["epochs"] != old["runs"][0]["epochs"]
    assert not os.path.exists(checkpoint(old["runs"][0])) and os.path.exists(checkpoint(new["runs"][0]))


def test_same_config_adds_seeds(run_train):
    """The same command with another seed adds it; the first seed's numbers and checkpoint stay as they were."""
    _, first = run_train("--variant", "l1", *FAST, "--seeds", "0", name="l1")
    code, both = run_train("--variant", "l1", *FAST, "--seeds", "1", name="l1")
    assert code == 0 and [r["seed"] for r in both["runs"]] == [0, 1] and both["config"]["seeds"] == [0, 1]
    assert both["runs"][0] == first["runs"][0]
    assert both["summary"]["seeds"] == [0, 1] and both["summary"]["final_test_acc_std"] is not None
    assert all(os.path.exists(checkpoint(r)) for r in both["runs"])


def test_a_seed_already_present_is_kept(run_train, tmp_path, monkeypatch, capsys):
    """A seed that is already in the results file with this config is kept, not trained again."""
    run_train("--variant", "l1", *FAST, name="l1")
    before = snapshot(tmp_path)
    capsys.readouterr()
    never_train(monkeypatch)
    code, _ = run_train("--variant", "l1", *FAST, name="l1")
    out = capsys.readouterr().out
    assert code == 0 and "kept" in out and "nothing to train" in out and "training 0" not in out
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("resume", [False, True], ids=["merge", "resume"])
def test_truncated_results_json_is_one_line(run_train, tmp_path, capsys, resume):
    """A truncated results JSON met when merging or resuming: exit 2, one line naming the file and the way out."""
    run_train("--variant", "l1", *FAST, name="l1")
    path = tmp_path / "l1.json"
    path.write_bytes(path.read_bytes()[:200])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_train("--variant", "l1", *FAST, *(["--resume"] if resume else []), name="l1")
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(path) in err and "not valid JSON" in err and "--overwrite" in err, err


# -----------------------------------------------------------------------------
# one writer at a time

def test_a_second_writer_is_refused(tmp_path, capsys, monkeypatch):
    """While one process holds <out>/<name>.lock, a train.py into the same out and name exits 2, naming the lock."""
    never_train(monkeypatch)
    with results.Lock(str(tmp_path), "l1"):
        with pytest.raises(SystemExit) as e:
            train.main(["--variant", "l1", *FAST, "--data", DATA, "--out", str(tmp_path), "--device", "cpu",
                        "--no-compile"])
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(tmp_path / "l1.lock") in err, err
    with results.Lock(str(tmp_path), "l1"):  # the refused run let go of everything it took
        pass


# -----------------------------------------------------------------------------
# a checkpoint and its JSON change as one unit

def test_crash_between_checkpoint_and_json_keeps_the_old_pair(run_train, tmp_path, monkeypatch, capsys):
    """Killed (here: a full disk) after the new checkpoint is written but before the JSON: the old JSON still names
    existing checkpoints holding the old weights. The next successful save leaves no orphan and no temporary file."""
    _, old = run_train("--variant", "l1", *FAST, name="l1")
    old_json = (tmp_path / "l1.json").read_bytes()
    old_weights = torch.load(checkpoint(old["runs"][0]), weights_only=True)

    def disk_full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    with monkeypatch.context() as m:
        m.setattr(results, "write_json", disk_full)
        with pytest.raises(SystemExit) as e:
            run_train("--variant", "l1", *FAST, "--lr", "0.05", "--overwrite", name="l1")
    assert e.value.code == 1 and "No space left on device" in one_line_error(capsys)
    assert (tmp_path / "l1.json").read_bytes() == old_json
    weights = torch.load(checkpoint(old["runs"][0]), weights_only=True)
    assert all(torch.equal(weights[k], old_weights[k]) for k in old_weights)
    assert len(list(tmp_path.glob("l1-seed0-*.pt"))) == 2, "the new checkpoint was written first"
    code, new = run_train("--variant", "l1", *FAST, "--lr", "0.05", "--overwrite", name="l1")
    assert code == 0
    assert sorted(tmp_path.glob("l1-seed*.pt")) == [tmp_path / os.path.basename(new["runs"][0]["checkpoint"])]
    assert not list(tmp_path.rglob("*.tmp*"))


def test_a_pack_writes_its_seeds_together(run_train, monkeypatch):
    """A packed run saves each results file once, with all its new seeds: a kill between two saves cannot leave
    a file holding part of a pack (whose state --resume would then no longer find)."""
    save, saved = results.save, []
    monkeypatch.setattr(results, "save", lambda folder, name, result, weights: saved.append((name, sorted(weights)))
                        or save(folder, name, result, weights))
    code, res = run_train("--variant", "l1", *FAST, "--seeds", "0,1", "--packed", name="l1")
    assert code == 0 and saved == [("l1", [0, 1])] and [r["seed"] for r in res["runs"]] == [0, 1]


def test_full_disk_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    """On a full disk save_torch and write_json raise OSError(ENOSPC) naming the file (torch.save's own writer
    would raise a RuntimeError about stream positions) and leave no temporary file."""
    monkeypatch.setattr(results, "open", lambda path, mode: open("/dev/full", mode), raising=False)
    for save, obj in [(results.save_torch, {"w": torch.zeros(100_000)}), (results.write_json, {"x": "y" * 100_000})]:
        path = str(tmp_path / "file")
        with pytest.raises(OSError) as e:
            save(path, obj)
        assert e.value.errno == errno.ENOSPC and e.value.filename == path
        assert not list(tmp_path.iterdir())


def test_checkpoint_names_follow_the_weights():
    """Checkpoints are named by content: other weights, another name; the owner is read back from the name."""
    a, b = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    na, nb = results.checkpoint_name("l1-seed-x", 7, a), results.checkpoint_name("l1-seed-x", 7, b)
    assert na != nb and na.startswith("l1-seed-x-seed7-") and na.endswith(".pt")
    assert results.checkpoint_owner(na) == "l1-seed-x" and results.checkpoint_name("l1-seed-x", 7, a) == na


# -----------------------------------------------------------------------------
# reading, summaries and paired statistics

def test_load_explains_what_is_wrong(tmp_path):
    """A missing file, another schema, no runs: each a ResultsError naming the file."""
    path = tmp_path / "x.json"
    with pytest.raises(results.ResultsError, match="cannot read"):
        results.load(str(path))
    path.write_text(json.dumps({"schema": 1, "runs": []}))
    with pytest.raises(results.ResultsError, match=r"x.json: schema 1, this code reads schema 2"):
        results.load(str(path))
    path.write_text(json.dumps({"schema": 2, "variant": "l1", "config": {}, "runs": [], "summary": {}}))
    with pytest.raises(results.ResultsError, match="no runs"):
        results.load(str(path))


def test_check_merge_names_what_differs():
    """Where a run was written (out, data, name, device) and which seeds it holds may differ; what it computes
    may not."""
    old = {"config": {"epochs": 20, "lr": 0.1, "seeds": [0], "out": "a", "device": "cuda"}}
    results.check_merge("r.json", old, {"epochs": 20, "lr": 0.1, "seeds": [1], "out": "b", "device": "cpu"})
    message = r"r\.json holds a finished run with another config \(epochs \(20 -> 1\), lr \(0\.1 -> 0\.2\)\)"
    with pytest.raises(results.ResultsError, match=message):
        results.check_merge("r.json", old, {"epochs": 1, "lr": 0.2, "seeds": [0]})


def test_summaries_say_only_what_the_seeds_allow():
    """One seed: a mean without ± and no std; two seeds: mean ± sample std and the min; diverged seeds left out."""
    run = lambda seed, acc, status="ok": {"seed": seed, "final_test_acc": acc, "status": status}
    one = results.summarize([run(0, 99.4), run(1, 10.0, "diverged")])
    assert one["final_test_acc_std"] is None and one["diverged"] == [1]
    assert results.describe(one) == "99.40 (1 seed)"
    two = results.summarize([run(0, 99.4), run(1, 99.2)])
    assert two["final_test_acc_std"] == pytest.approx(0.1414213562, rel=1e-9)
    assert results.describe(two) == "99.30 ± 0.14 (min 99.20, 2 seeds)"
    assert results.describe(results.summarize([run(0, 10.0, "diverged")])) == "diverged"


def test_paired_interval_by_hand():
    """Mean of the paired differences and its 95% t-interval (t = 4.303 for 2 degrees of freedom)."""
    mean, lo, hi = results.paired_interval([99.5, 99.4, 99.6], [99.4, 99.4, 99.4])
    d = [0.1, 0.0, 0.2]
    sd = (sum((x - 0.1) ** 2 for x in d) / 2) ** 0.5
    assert mean == pytest.approx(0.1) and hi - mean == pytest.approx(4.303 * sd / 3 ** 0.5)
    assert mean - lo == pytest.approx(hi - mean)
    assert results.paired_interval([99.5], [99.4])[1:] == (None, None)
