"""verify.py: every checkpoint under a folder tree re-evaluates to what its JSON says (the hash in its name, the
accuracy, the misclassified list, near_zero_fraction, the final loss), against the checkpoints in the JSON's own
folder; exit 1 when anything differs or nothing can be checked, exit 2 in one line for a damaged file."""
import json
import os
import shutil
import subprocess

import pytest
import torch

import results
import verify
from conftest import DATA, FP32, ROOT, checkpoint, one_line_error

FAST = ["--epochs", "1", "--train-limit", "64", "--test-limit", "64", *FP32]


@pytest.fixture
def two_seeds(run_train, tmp_path):
    """A real run of none, seeds 0 and 1 (64 images, 1 epoch): (tmp_path, its JSON)."""
    code, res = run_train("--variant", "none", *FAST, "--seeds", "0,1")
    assert code == 0
    return tmp_path, res


def run_verify(folder, capsys):
    """verify.py --results folder -> (exit code, stdout lines, stderr)."""
    try:
        code = verify.main(["--results", str(folder), "--data", DATA])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code or 0, out.splitlines(), err


def line_naming(lines, name):
    """The one output line about the checkpoint called name."""
    found = [line for line in lines if os.path.basename(line.split(" -> ")[0]) == name]
    assert len(found) == 1, lines
    return found[0]


def test_a_real_run_verifies(two_seeds, capsys):
    """Both checkpoints of a real run re-evaluate to their JSON: exit 0, "all 2 checkpoints"."""
    folder, res = two_seeds
    capsys.readouterr()
    code, lines, err = run_verify(folder, capsys)
    assert code == 0 and lines[-1].startswith(f"all 2 checkpoints under {folder} re-evaluate"), (lines, err)
    for run in res["runs"]:
        assert line_naming(lines, run["checkpoint"]).endswith("equals its JSON"), lines


def test_a_validation_run_is_checked_on_the_validation_images(run_train, tmp_path, capsys):
    """A --val run re-evaluates on the last 10k training images it was scored on, and verifies."""
    code, res = run_train("--variant", "none", *FAST, "--val")
    assert code == 0 and res["config"]["val"]
    capsys.readouterr()
    code, lines, err = run_verify(tmp_path, capsys)
    assert code == 0 and "all 1 checkpoints" in lines[-1], (lines, err)


def edit_pred(r):
    m = r["runs"][1]["misclassified"][0]
    m["pred"] = next(p for p in range(10) if p not in (m["pred"], m["label"]))


EDITS = {  # what verify.py names -> a hand edit that results.load cannot see (nothing derived from it)
    "MISCLASSIFIED LIST DIFFERS": edit_pred,
    "NEAR_ZERO_FRACTION": lambda r: r["runs"][1].update(near_zero_fraction=r["runs"][1]["near_zero_fraction"] + 0.01),
    "LOSS": lambda r: r["runs"][1]["epochs"][-1].update(test_loss=r["runs"][1]["epochs"][-1]["test_loss"] + 0.01),
}


@pytest.mark.parametrize("problem", list(EDITS))
def test_an_edited_json_fails(two_seeds, capsys, problem):
    """A JSON whose misclassified prediction, near-zero fraction or final loss was edited: exit 1, and the line of
    that seed's checkpoint names what differs; the other seed still equals its JSON."""
    folder, res = two_seeds
    EDITS[problem](res)
    (folder / "none.json").write_text(json.dumps(res))
    capsys.readouterr()
    code, lines, err = run_verify(folder, capsys)
    assert code == 1 and "1 of 2 checkpoints do not re-evaluate" in err, (lines, err)
    assert problem in line_naming(lines, res["runs"][1]["checkpoint"]), lines
    assert line_naming(lines, res["runs"][0]["checkpoint"]).endswith("equals its JSON"), lines


def test_other_weights_under_the_same_name_fail(two_seeds, capsys):
    """A checkpoint replaced by other weights (one weight nudged by 1e-6) under its old name: exit 1, its hash
    no longer matches the name."""
    folder, res = two_seeds
    path = checkpoint(folder, res["runs"][0])
    weights = torch.load(path, weights_only=True)
    key = next(k for k, w in weights.items() if w.dim() == 4)
    weights[key].view(-1)[0] += 1e-6
    torch.save(weights, path)
    capsys.readouterr()
    code, lines, err = run_verify(folder, capsys)
    assert code == 1 and "1 of 2 checkpoints" in err, (lines, err)
    assert "WEIGHTS DO NOT MATCH THE HASH" in line_naming(lines, res["runs"][0]["checkpoint"]), lines


def test_a_checkpoint_no_json_names_fails(two_seeds, capsys):
    """A seed dropped from its JSON by hand leaves its weights behind: a checkpoint that no JSON names is exit 1,
    on a line of its own; an unfinished run's file under state/ is not such a checkpoint."""
    folder, res = two_seeds
    (folder / "state").mkdir(exist_ok=True)
    shutil.copy(checkpoint(folder, res["runs"][0]), folder / "state" / "none@0,1.pt")
    capsys.readouterr()
    code, lines, err = run_verify(folder, capsys)
    assert code == 0 and "all 2 checkpoints" in lines[-1], (lines, err)
    shutil.copy(checkpoint(folder, res["runs"][0]), folder / "none-seed7-0123abcd.pt")
    code, lines, err = run_verify(folder, capsys)
    assert code == 1 and "1 checkpoint(s) named by no JSON" in err and "none-seed7-0123abcd.pt" in err, (lines, err)
    assert [line for line in lines if "NO JSON" in line] == [
        f"{os.path.relpath(folder / 'none-seed7-0123abcd.pt')}: NO JSON NAMES THIS CHECKPOINT"], lines


def test_a_truncated_checkpoint_is_one_line(two_seeds, capsys):
    """A checkpoint cut short: exit 2, one line naming it."""
    folder, res = two_seeds
    path = checkpoint(folder, res["runs"][1])
    with open(path, "r+b") as f:
        f.truncate(300)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        verify.main(["--results", str(folder), "--data", DATA])
    err = one_line_error(capsys)
    assert e.value.code == 2 and path in err and "damaged checkpoint" in err, err


def test_a_copied_folder_verifies_its_own_checkpoints(two_seeds, tmp_path_factory, capsys):
    """A results folder copied elsewhere is checked against the copy's checkpoints: with the copy's checkpoint
    emptied, the copy fails (exit 2, naming the copy's file) while the original still passes."""
    folder, res = two_seeds
    copy = tmp_path_factory.mktemp("elsewhere") / "copy"
    shutil.copytree(folder, copy)
    open(checkpoint(copy, res["runs"][0]), "wb").close()
    capsys.readouterr()
    code, _, err = run_verify(copy, capsys)
    assert code == 2 and checkpoint(copy, res["runs"][0]) in err, err
    code, lines, err = run_verify(folder, capsys)
    assert code == 0 and "all 2 checkpoints" in lines[-1], (lines, err)


def test_every_run_diverged_is_exit_1(run_train, tmp_path, capsys):
    """A folder whose every run diverged has nothing to re-evaluate: exit 1, "no checkpoint to verify"."""
    code, res = run_train("--variant", "none", *FAST, "--lr", "1e30")
    assert code == 1 and res["summary"]["diverged"] == [0], res["summary"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        verify.main(["--results", str(tmp_path), "--data", DATA])
    err = one_line_error(capsys)
    assert e.value.code == 1 and "no checkpoint to verify" in err, err


def test_subfolders_are_walked(run_train, tmp_path, capsys):
    """verify.py checks the folder and every folder below it (state/ aside), each against its own checkpoints."""
    _, top = run_train("--variant", "none", *FAST, out=tmp_path)
    _, below = run_train("--variant", "l1", *FAST, out=tmp_path / "sub" / "deeper", name="l1")
    capsys.readouterr()
    code, lines, err = run_verify(tmp_path, capsys)
    assert code == 0 and "all 2 checkpoints" in lines[-1], (lines, err)
    assert line_naming(lines, top["runs"][0]["checkpoint"]) and line_naming(lines, below["runs"][0]["checkpoint"])


def test_missing_data_folder_is_refused(two_seeds, capsys):
    """A --data folder that does not exist is a one-line error (exit 2), not a download into a new folder."""
    folder, _ = two_seeds
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        verify.main(["--results", str(folder), "--data", str(folder / "nodata")])
    err = one_line_error(capsys)
    assert e.value.code == 2 and "not a directory" in err, err
    assert not (folder / "nodata").exists()


def test_make_plots_verifies_before_it_publishes():
    """`make plots` runs verify.py first, then plot.py, then report.py: nothing is drawn that verify rejects."""
    r = subprocess.run(["make", "-n", "plots"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = {script: next((i for i, line in enumerate(lines) if f" {script} " in f" {line} "), None)
          for script in ("verify.py", "plot.py", "report.py")}
    assert None not in at.values() and at["verify.py"] < at["plot.py"] < at["report.py"], r.stdout


def test_the_committed_plan_is_not_taken_for_a_results_file():
    """results/confirm/plan.json is the plan, not a run: the readers pass over it (a reserved name)."""
    assert results.check_name("plan") is not None
    assert results.result_paths(os.path.join(ROOT, "results", "confirm")) == []
