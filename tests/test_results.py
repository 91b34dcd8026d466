"""Results files: a run never destroys another's results, a checkpoint and its JSON change as one unit, every
number that follows from the records is checked against them, a damaged or edited file is a one-line error, and the
summaries say what they can."""
import errno
import json
import os
import shutil

import pytest
import torch

import loop
import plot
import report
import results
import rules
import state
import stats
import train
from conftest import DATA, FP32, checkpoint, one_line_error

FAST = ["--epochs", "1", "--train-limit", "64", "--test-limit", "64", *FP32]
DEAD_PID = 2**22 + 12345  # above Linux's largest pid_max (2^22): no process ever has it


def snapshot(folder):
    """{file name: bytes} of every file directly in folder."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def never_train(monkeypatch):
    monkeypatch.setattr(loop, "train_pack", lambda *a, **kw: pytest.fail("trained although it must not"))


def edit(path, change):
    """Rewrite a JSON file with change(obj) applied: a hand edit."""
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


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
    assert os.path.exists(checkpoint(tmp_path, old["runs"][0]))


def test_overwrite_replaces_a_run_with_another_config(run_train, tmp_path):
    """--overwrite replaces the old results file: the new config, the new numbers, no checkpoint of the old run."""
    _, old = run_train("--variant", "l1", *FAST, name="l1")
    code, new = run_train("--variant", "l1", *FAST, "--lr", "0.05", "--overwrite", name="l1")
    assert code == 0 and new["config"]["lr"] == 0.05 and [r["seed"] for r in new["runs"]] == [0]
    assert new["runs"][0]["epochs"] != old["runs"][0]["epochs"]
    assert not os.path.exists(checkpoint(tmp_path, old["runs"][0])) and os.path.exists(checkpoint(tmp_path, new["runs"][0]))


def test_overwrite_with_another_config_names_the_dropped_seeds(run_train, tmp_path, capsys):
    """--overwrite with another config over seeds 0,1 while asking for seed 0 alone: one line of output names the
    file and the dropped seeds [0, 1], and the new file holds seed 0 only."""
    run_train("--variant", "l1", *FAST, "--seeds", "0,1", name="l1")
    capsys.readouterr()
    code, new = run_train("--variant", "l1", *FAST, "--seeds", "0", "--lr", "0.05", "--overwrite", name="l1")
    lines = [line for line in capsys.readouterr().out.splitlines() if "dropped" in line]
    assert code == 0 and [r["seed"] for r in new["runs"]] == [0], new["config"]["seeds"]
    assert len(lines) == 1 and str(tmp_path / "l1.json") in lines[0] and "[0, 1]" in lines[0], lines
    assert "lr (0.1 -> 0.05)" in lines[0], lines


def test_overwrite_with_the_same_config_retrains_only_the_named_seeds(run_train, tmp_path, capsys, monkeypatch):
    """--seeds 0 --overwrite over seeds 0,1 of the same config trains seed 0 again and keeps seed 1, its numbers
    and its checkpoint byte for byte; the output says which seeds are trained again and which are kept."""
    _, old = run_train("--variant", "l1", *FAST, "--seeds", "0,1", name="l1")
    kept = next(r for r in old["runs"] if r["seed"] == 1)
    kept_bytes = open(checkpoint(tmp_path, kept), "rb").read()
    trained, train_pack = [], loop.train_pack
    monkeypatch.setattr(loop, "train_pack", lambda members, *a, **kw: trained.append([s for _, s in members])
                        or train_pack(members, *a, **kw))
    capsys.readouterr()
    code, new = run_train("--variant", "l1", *FAST, "--seeds", "0", "--overwrite", name="l1")
    out = capsys.readouterr().out
    assert code == 0 and trained == [[0]], trained
    assert sorted(r["seed"] for r in new["runs"]) == [0, 1], new["config"]["seeds"]
    assert next(r for r in new["runs"] if r["seed"] == 1) == kept
    assert open(checkpoint(tmp_path, kept), "rb").read() == kept_bytes
    assert "seeds [0] of" in out and "are trained again; seeds [1] are kept" in out, out


def test_same_config_adds_seeds(run_train, tmp_path):
    """The same command with another seed adds it; the first seed's numbers and checkpoint stay as they were."""
    _, first = run_train("--variant", "l1", *FAST, "--seeds", "0", name="l1")
    code, both = run_train("--variant", "l1", *FAST, "--seeds", "1", name="l1")
    assert code == 0 and [r["seed"] for r in both["runs"]] == [0, 1] and both["config"]["seeds"] == [0, 1]
    assert both["runs"][0] == first["runs"][0]
    assert both["summary"]["seeds"] == [0, 1] and both["summary"]["final_test_acc_std"] is not None
    assert all(os.path.exists(checkpoint(tmp_path, r)) for r in both["runs"])


def test_a_seed_already_present_is_kept(run_train, tmp_path, monkeypatch, capsys):
    """A seed that is already in the results file with this config is kept, not trained again."""
    run_train("--variant", "l1", *FAST, name="l1")
    before = snapshot(tmp_path)
    capsys.readouterr()
    never_train(monkeypatch)
    code, _ = run_train("--variant", "l1", *FAST, name="l1")
    out = capsys.readouterr().out
    assert code == 0 and "kept" in out and "nothing to train" in out and "training 0" not in out, out
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
    with results.locked(str(tmp_path), ["l1"]):
        with pytest.raises(SystemExit) as e:
            train.main(["--variant", "l1", *FAST, "--data", DATA, "--out", str(tmp_path), "--device", "cpu",
                        "--no-compile"])
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(tmp_path / "l1.lock") in err, err
    with results.locked(str(tmp_path), ["l1"]):  # the refused run let go of everything it took
        pass


# -----------------------------------------------------------------------------
# a checkpoint and its JSON change as one unit; temporary files do not outlive their writer

def test_crash_between_checkpoint_and_json_keeps_the_old_pair(run_train, tmp_path, monkeypatch, capsys):
    """Killed (here: a full disk) after the new checkpoint is written but before the JSON: the old JSON still names
    existing checkpoints holding the old weights. The next successful save leaves no orphan and no temporary file."""
    _, old = run_train("--variant", "l1", *FAST, name="l1")
    old_json = (tmp_path / "l1.json").read_bytes()
    old_weights = torch.load(checkpoint(tmp_path, old["runs"][0]), weights_only=True)

    def disk_full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    with monkeypatch.context() as m:
        m.setattr(results, "write_json", disk_full)
        with pytest.raises(SystemExit) as e:
            run_train("--variant", "l1", *FAST, "--lr", "0.05", "--overwrite", name="l1")
    err = one_line_error(capsys)
    assert e.value.code == 1 and "No space left on device" in err and "--resume" in err, err
    assert (tmp_path / "l1.json").read_bytes() == old_json
    weights = torch.load(checkpoint(tmp_path, old["runs"][0]), weights_only=True)
    assert all(torch.equal(weights[k], old_weights[k]) for k in old_weights)
    assert len(list(tmp_path.glob("l1-seed0-*.pt"))) == 2, "the new checkpoint was written first"
    code, new = run_train("--variant", "l1", *FAST, "--lr", "0.05", "--overwrite", "--resume", name="l1")  # as told
    assert code == 0
    assert sorted(tmp_path.glob("l1-seed*.pt")) == [tmp_path / new["runs"][0]["checkpoint"]]
    assert not list(tmp_path.rglob("*.tmp*")) and not list((tmp_path / "state").iterdir())


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


def test_a_dead_writers_temporary_file_is_removed_at_the_next_write(tmp_path):
    """A <name>.json.tmp<PID> left by a process that no longer runs (kill -9) is removed by the next write into its
    folder; one of a live process (it may be writing right now) is kept."""
    dead, live = tmp_path / f"l1.json.tmp{DEAD_PID}", tmp_path / f"l2.json.tmp{os.getppid()}"
    assert not os.path.exists(f"/proc/{DEAD_PID}") and os.path.exists(f"/proc/{os.getppid()}")
    dead.write_text("{half")
    live.write_text("{half")
    results.write_json(str(tmp_path / "none.json"), {"x": 1})
    assert not dead.exists(), sorted(os.listdir(tmp_path))
    assert live.exists() and json.loads((tmp_path / "none.json").read_text()) == {"x": 1}


def test_checkpoint_names_follow_the_weights():
    """Checkpoints are named by content: other weights, another name; the owner is read back from the name."""
    a, b = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    na, nb = results.checkpoint_name("l1-seed-x", 7, a), results.checkpoint_name("l1-seed-x", 7, b)
    assert na != nb and na.startswith("l1-seed-x-seed7-") and na.endswith(".pt")
    assert results.checkpoint_owner(na) == "l1-seed-x" and results.checkpoint_name("l1-seed-x", 7, a) == na


def test_a_results_folder_can_be_moved(run_train, tmp_path):
    """The JSON names its checkpoints relative to its own folder: a moved folder loads its own checkpoints."""
    _, res = run_train("--variant", "l1", *FAST, out=tmp_path / "a", name="l1")
    assert res["runs"][0]["checkpoint"] == os.path.basename(res["runs"][0]["checkpoint"]), res["runs"][0]["checkpoint"]
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = results.load(str(tmp_path / "b" / "l1.json"))
    weights = results.load_checkpoint(str(tmp_path / "b"), moved["runs"][0])
    assert results.weights_sha256(weights)[:8] in moved["runs"][0]["checkpoint"]


# -----------------------------------------------------------------------------
# names: results files and state files

@pytest.mark.parametrize("name", sorted(results.RESERVED) + ["l1.lock"])
def test_reserved_names_are_refused(name):
    """A name the results folder keeps for itself (recipe, sweep, REPORT, ...) cannot name a results file."""
    why = results.check_name(name)
    assert why is not None and "reserved" in why, why


@pytest.mark.parametrize("name", ["", "l1+l2", "l1@0", "a,b", "a b", "x/y", "../x", ".hidden", "-x", "é", "x" * 101])
def test_malformed_names_are_refused(name):
    """Only letters, digits and . _ = - (not first), at most 100: no '+', '@' or ',' which spell state files."""
    why = results.check_name(name)
    assert why is not None and "letters, digits" in why, (name, why)


@pytest.mark.parametrize("name", ["l1", "l1-3e-4", "l2_1e-5", "lr=0.05", "A.b", "x" * 100])
def test_ordinary_names_are_accepted(name):
    """The names the Makefile and the studies use are accepted."""
    assert results.check_name(name) is None


def test_every_set_of_members_has_its_own_state_file(tmp_path):
    """state.path gives one file per set of (name, seed) members, and the members read back from its name."""
    sets = [[("l1", 0)], [("l2", 0)], [("l1", 0), ("l2", 0)], [("l1", 0), ("l1", 1)], [("l1", 0), ("l2", 1)],
            [("l1", 1), ("l2", 0)], [("l1", 0), ("l1", 1), ("l2", 0)], [("l1", 10)], [("l11", 0)]]
    paths = [state.path(str(tmp_path), m) for m in sets]
    assert len(set(paths)) == len(sets), paths
    assert [state.members_of(p) for p in paths] == sets
    assert all(os.path.dirname(p) == str(tmp_path / "state") for p in paths), paths


def test_no_name_can_forge_another_packs_state_file(tmp_path):
    """The name that would give the pack l1 seed 0 + l2 seed 0 the state file of one member ('l1@0+l2') and the
    combined name 'l1+l2' are both refused, so state files never collide."""
    pack = state.path(str(tmp_path), [("l1", 0), ("l2", 0)])
    assert state.path(str(tmp_path), [("l1@0+l2", 0)]) == pack  # what a forged name would do
    assert results.check_name("l1@0+l2") and results.check_name("l1+l2")
    assert state.path(str(tmp_path), [("l1+l2", 0)]) != pack


def test_a_very_long_pack_gets_a_short_distinct_state_file(tmp_path):
    """A pack whose spelled-out name would pass 200 characters is shortened to its first name and a hash, and two
    such packs still differ."""
    a = [(f"variant{i}", s) for i in range(20) for s in range(3)]
    b = a[:-1]
    pa, pb = state.path(str(tmp_path), a), state.path(str(tmp_path), b)
    assert pa != pb and len(os.path.basename(pa)) < 50 and os.path.basename(pa).startswith("variant0@"), (pa, pb)
    assert state.members_of(pa) is None


# -----------------------------------------------------------------------------
# reading: a damaged, old or hand-edited file is refused in one line naming it

def test_load_explains_what_is_wrong(tmp_path):
    """A missing file, another schema, no runs: each a ResultsError naming the file."""
    path = tmp_path / "x.json"
    with pytest.raises(results.ResultsError, match="cannot read"):
        results.load(str(path))
    path.write_text(json.dumps({"schema": 1, "runs": []}))
    with pytest.raises(results.ResultsError, match=r"x.json: schema 1, this code reads schema 3"):
        results.load(str(path))
    path.write_text(json.dumps({"schema": 3, "variant": "l1", "config": {}, "runs": [], "summary": {}}))
    with pytest.raises(results.ResultsError, match="no runs"):
        results.load(str(path))


EDITS = {  # key named in the error -> a hand edit of a real one-seed file
    "final_test_acc_min": lambda r: r["summary"].update(final_test_acc_min=14.0),
    "final_test_acc_mean": lambda r: r["summary"].update(final_test_acc_mean=r["summary"]["final_test_acc_mean"] + 1),
    "final_test_acc": lambda r: r["runs"][0].update(final_test_acc=r["runs"][0]["final_test_acc"] + 1.5625),
    "test_correct": lambda r: r["runs"][0].update(test_correct=r["runs"][0]["test_correct"] + 1),
    "best_test_acc": lambda r: r["runs"][0].update(best_test_acc=99.9),
    "best_epoch": lambda r: r["runs"][0].update(best_epoch=2),
    "first_epoch_at_99_4": lambda r: r["runs"][0].update(first_epoch_at_99_4=1),
    "checkpoint": lambda r: r["runs"][0].pop("checkpoint"),  # plot.py and verify.py would meet a KeyError
}


@pytest.fixture
def one_run(run_train, tmp_path):
    """A real one-seed, one-epoch results file: tmp_path/none.json."""
    code, res = run_train("--variant", "none", *FAST)
    assert code == 0
    return tmp_path / "none.json"


@pytest.mark.parametrize("key", list(EDITS))
def test_a_hand_edited_number_is_refused(one_run, key):
    """A number that follows from the per-epoch records or the misclassified list edited by hand, or the checkpoint's
    name removed: results.load refuses the file in one line that names it and the key."""
    edit(one_run, EDITS[key])
    with pytest.raises(results.ResultsError) as e:
        results.load(str(one_run))
    message = str(e.value)
    assert len(message.splitlines()) == 1 and str(one_run) in message and key in message, message


def test_a_misclassified_list_of_another_length_is_refused(one_run):
    """Dropping one digit from the misclassified list contradicts the stored correct count."""
    edit(one_run, lambda r: r["runs"][0].update(misclassified=r["runs"][0]["misclassified"][1:]))
    with pytest.raises(results.ResultsError, match=r"test_correct is (\d+), its records give (\d+)") as e:
        results.load(str(one_run))
    assert str(one_run) in str(e.value)


@pytest.mark.parametrize("main", [plot.main, report.main], ids=["plot", "report"])
def test_renderers_refuse_an_edited_folder(one_run, capsys, main):
    """plot.py and report.py exit 2 with one line naming the edited file and key, and write nothing."""
    edit(one_run, EDITS["final_test_acc_min"])
    before = snapshot(one_run.parent)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--results", str(one_run.parent)])
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(one_run) in err and "final_test_acc_min is 14.0" in err, err
    assert snapshot(one_run.parent) == before


def test_check_merge_names_what_differs():
    """Where a run was written (out, data, name, device) and which seeds it holds may differ; what it computes
    may not."""
    old = {"config": {"epochs": 20, "lr": 0.1, "seeds": [0], "out": "a", "device": "cuda"}}
    results.check_merge("r.json", old, {"epochs": 20, "lr": 0.1, "seeds": [1], "out": "b", "device": "cpu"})
    message = r"r\.json holds a finished run with another config \(epochs \(20 -> 1\), lr \(0\.1 -> 0\.2\)\)"
    with pytest.raises(results.ResultsError, match=message):
        results.check_merge("r.json", old, {"epochs": 1, "lr": 0.2, "seeds": [0]})


def test_a_validation_run_among_test_runs_is_refused(run_train, tmp_path):
    """load_folder refuses a folder mixing --val and test runs, in one line naming the validation run."""
    run_train("--variant", "l1", *FAST, name="l1")
    run_train("--variant", "l1", *FAST, "--val", "--name", "l1-val", out=tmp_path / "val", name="l1-val")
    for f in (tmp_path / "val").glob("l1-val*"):  # copied in by hand: train.py itself refuses to mix
        shutil.copy(f, tmp_path)
    with pytest.raises(results.ResultsError) as e:
        results.load_folder(str(tmp_path))
    message = str(e.value)
    assert len(message.splitlines()) == 1 and "l1-val is a validation run" in message, message


# -----------------------------------------------------------------------------
# schemas

def test_another_schema_is_refused(run_train, tmp_path):
    """A file of schema 2 (checkpoints named relative to the repository) is a ResultsError naming both schemas."""
    _, res = run_train("--variant", "l1", *FAST, name="l1")
    (tmp_path / "l1.json").write_text(json.dumps(res | {"schema": 2}))
    with pytest.raises(results.ResultsError, match=r"schema 2, this code reads schema 3; move it away"):
        results.load(str(tmp_path / "l1.json"))


# -----------------------------------------------------------------------------
# summaries and paired statistics

def test_summaries_say_only_what_the_seeds_allow():
    """One seed: a mean without ± and no std; two seeds: mean ± sample std and the min; diverged seeds left out."""
    run = lambda seed, acc, status="ok": {"seed": seed, "final_test_acc": acc, "status": status}
    one = stats.summarize([run(0, 99.4), run(1, 10.0, "diverged")])
    assert one["final_test_acc_std"] is None and one["diverged"] == [1]
    assert stats.describe(one) == "99.40 (1 seed)"
    two = stats.summarize([run(0, 99.4), run(1, 99.2)])
    assert two["final_test_acc_std"] == pytest.approx(0.1414213562, rel=1e-9)
    assert stats.describe(two) == "99.30 ± 0.14 (min 99.20, 2 seeds)"
    assert stats.describe(stats.summarize([run(0, 10.0, "diverged")])) == "diverged"


def test_paired_interval_by_hand():
    """Mean of the paired differences and its 95% t-interval with the exact quantile (t = 4.302653 for 2 degrees
    of freedom, not a table's rounded 4.303)."""
    d = [0.1, 0.0, 0.2]  # 99.5, 99.4, 99.6 minus 99.4 on the same seeds
    mean, lo, hi = stats.interval(d)
    sd = (sum((x - 0.1) ** 2 for x in d) / 2) ** 0.5
    assert mean == pytest.approx(0.1) and hi - mean == pytest.approx(4.302653 * sd / 3 ** 0.5, rel=1e-6)
    assert mean - lo == pytest.approx(hi - mean)
    assert stats.interval([0.1])[1:] == (None, None)


def test_paired_names_every_difference():
    """stats.paired refuses runs trained differently with every differing key (val included), but not the
    penalty, the norm or where a run was written."""
    cfg = {"name": "none", "variant": "none", "l1": 0.0, "l2": 0.0, "norm": "bn", "epochs": 15, "lr": 0.1,
           "val": False, "out": "results", "seeds": [0, 1]}
    base = {"config": cfg, "runs": [{"seed": 0, "status": "ok", "final_test_acc": 99.4}]}
    same = {"config": cfg | {"name": "l1", "variant": "l1", "l1": 1e-5, "norm": "gbn", "out": "x", "seeds": [0]},
            "runs": [{"seed": 0, "status": "ok", "final_test_acc": 99.5}]}
    seeds, diffs = stats.paired(same, base)
    assert seeds == [0] and diffs == [pytest.approx(0.1)], (seeds, diffs)
    other = same | {"config": same["config"] | {"epochs": 4, "lr": 0.05, "val": True}}
    with pytest.raises(ValueError) as e:
        stats.paired(other, base)
    for key in ("epochs (4 -> 15)", "lr (0.05 -> 0.1)", "val (True -> False)"):
        assert key in str(e.value), str(e.value)


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["runs"][0].update(status="diverged", diverged_epoch=1), "marks a diverged run"),
    (lambda r: r["runs"][0].update(checkpoint="/elsewhere/" + r["runs"][0]["checkpoint"]), "not a file name beside")],
    ids=["hidden as diverged", "checkpoint elsewhere"])
def test_a_run_cannot_be_hidden_or_pointed_elsewhere(run_train, tmp_path, edit, message):
    """A finished run marked diverged (which drops it from the mean) or a checkpoint outside the folder is refused."""
    _, res = run_train("--variant", "l1", *FAST, name="l1")
    edit(res)
    (tmp_path / "l1.json").write_text(json.dumps(res))
    with pytest.raises(results.ResultsError, match=message):
        results.load(str(tmp_path / "l1.json"))


def test_overwrite_replaces_a_damaged_file(run_train, tmp_path):
    """A truncated results file, refused otherwise, is replaced by --overwrite as its hint says."""
    run_train("--variant", "l1", *FAST, name="l1")
    blob = (tmp_path / "l1.json").read_bytes()
    (tmp_path / "l1.json").write_bytes(blob[:len(blob) // 2])
    code, res = run_train("--variant", "l1", *FAST, "--overwrite", name="l1")
    assert code == 0 and [r["seed"] for r in res["runs"]] == [0]


def test_overwrite_keeps_the_checkpoints_another_json_names(run_train, tmp_path):
    """--overwrite of l1.json keeps the checkpoints that a user's copy of it (l1-backup.json) still names, and the
    folder verifies: no JSON names a missing file."""
    _, old = run_train("--variant", "l1", *FAST, name="l1")
    shutil.copy(tmp_path / "l1.json", tmp_path / "l1-backup.json")
    code, new = run_train("--variant", "l1", *FAST, "--lr", "0.05", "--overwrite", name="l1")
    assert code == 0 and new["runs"][0]["checkpoint"] != old["runs"][0]["checkpoint"]
    assert os.path.exists(checkpoint(tmp_path, old["runs"][0])), "the copy's checkpoint was deleted"
    assert results.load(str(tmp_path / "l1-backup.json")) and results.load(str(tmp_path / "l1.json"))


def test_a_new_config_field_with_a_default_keeps_old_files_comparable(monkeypatch):
    """A Config field added after a file was written is read at its default: the committed none.json still compares
    equal to what train.py writes today, and a file that recorded another value for the new field does not."""
    import dataclasses
    import config
    base = dataclasses.make_dataclass("Config", [("wd", float, 0.0)], bases=(config.Config,))
    monkeypatch.setattr(config, "Config", base)
    old = json.load(open(os.path.join(results.REPO, "results", "none.json")))["config"]
    now = dataclasses.asdict(base(**{k: v for k, v in old.items() if k in {f.name for f in dataclasses.fields(base)}}))
    assert "wd" not in old and rules.differences(old, now) == []
    assert rules.differences(old, now | {"wd": 0.1}) == ["wd (0.0 -> 0.1)"]
