"""Every file a figure or REPORT.md reads is checked against the runs it describes (crosscheck.py, run by verify.py):
choice.json and the data-size runs, recipe.json and its candidates, a run's λ against its weights; readers and
verifier refuse symbolic links alike. The committed results are copied into tmp folders, never edited."""
import json
import os
import shutil

import pytest

import choices
import crosscheck
import report
import results
import verify
from conftest import DATA, FP32, ROOT

COMMITTED = os.path.join(ROOT, "results")
FAST = ["--epochs", "1", "--train-limit", "64", "--test-limit", "64", *FP32]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A copy of the committed data-size study (choice.json, val/, n<N>/): the folder holding datasize/."""
    root = tmp_path_factory.mktemp("committed")
    shutil.copytree(os.path.join(COMMITTED, "datasize"), root / "datasize")
    return root


@pytest.fixture
def copy(study, tmp_path):
    """A fresh copy of the study for one test to edit: the folder holding datasize/."""
    shutil.copytree(study / "datasize", tmp_path / "datasize")
    return tmp_path


def edit(path, change):
    """Apply change(doc) to a JSON file, as a hand edit would."""
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_the_committed_study_agrees_with_its_runs(study):
    """choice.json equals what its validation runs give, and every data-size run has the study's config."""
    assert crosscheck.check_tree(str(study)) == []


def test_an_edited_choice_fails(copy):
    """Case 1: n1000's chosen λ2 set to 0.1 and its reference mean to 99.9 (what REPORT.md would show) is named."""
    def change(doc):
        doc["sizes"]["1000"]["chosen"]["l2"] = 0.1
        doc["sizes"]["1000"]["reference"]["val_acc_mean"] = 99.9
    edit(copy / "datasize" / "choice.json", change)
    problems = crosscheck.check_tree(str(copy))
    assert len(problems) == 3, problems  # the entry itself, and the two n1000 runs that did not use λ2 = 0.1
    assert "choice.json: n1000 differs" in problems[0] and "chosen, reference" in problems[0], problems
    assert all(f"n1000/{v}.json" in p and "l2 (0.1 -> 0.001)" in p for v, p in zip(("l1l2", "l2"), problems[1:]))


@pytest.mark.parametrize("name,key,value,named", [
    ("l2", "train_subset", 5000, "train_subset (1000 -> 5000)"), ("none", "steps", 20, "steps (9375 -> 20)"),
    ("l1l2", "seeds", [0, 1, 2, 3, 4, 5], "seeds"), ("none", "test_limit", 64, "test_limit (0 -> 64)")])
def test_a_run_unlike_its_folder_fails(copy, name, key, value, named):
    """Case 2: a run in n1000/ whose subset, steps, seeds or evaluation is not what `datasize.py test 1000` trains
    is named with the setting that differs."""
    edit(copy / "datasize" / "n1000" / f"{name}.json", lambda doc: doc["config"].update({key: value}))
    problems = crosscheck.check_tree(str(copy))
    assert len(problems) == 1 and f"n1000/{name}.json" in problems[0] and named in problems[0], problems


def test_a_file_the_study_does_not_write_fails(copy):
    """Case 2: a results file in n1000/ that datasize.py does not write there (a copy under another name) is named."""
    shutil.copy(copy / "datasize" / "n1000" / "l2.json", copy / "datasize" / "n1000" / "l2-copy.json")
    problems = crosscheck.check_tree(str(copy))
    assert len(problems) == 1 and "l2-copy.json: not a run of the study" in problems[0], problems


def test_a_validation_run_of_another_lambda_fails(copy):
    """Case 1: a validation run whose λ is not its name's changes the choice and is named."""
    edit(copy / "datasize" / "val" / "n5000" / "l2-0.01.json", lambda doc: doc["config"].update(l2=0.02))
    problems = crosscheck.check_tree(str(copy))
    assert any("val/n5000/l2-0.01.json" in p and "l2 (0.01 -> 0.02)" in p for p in problems), problems


def test_verify_fails_on_a_published_file_that_disagrees(copy, capsys, monkeypatch):
    """verify.py (and so `make plots`) exits 1 on an edited choice.json, naming it; the checkpoints' own
    re-evaluation is stubbed here (test_verify covers it) so that the whole study is not re-evaluated."""
    monkeypatch.setattr(verify, "check_run", lambda folder, cfg, run, images, labels: (run["final_test_acc"], []))
    code = verify.main(["--results", str(copy), "--data", DATA])
    assert code in (None, 0) and "every choice.json and recipe.json" in capsys.readouterr().out
    edit(copy / "datasize" / "choice.json", lambda doc: doc["sizes"]["5000"]["chosen"].update(l1=1e-3))
    with pytest.raises(SystemExit) as e:
        verify.main(["--results", str(copy), "--data", DATA])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and "choice.json: n5000 differs" in err[0], err


# -----------------------------------------------------------------------------
# recipe.json: checked against its candidates, and written once

@pytest.fixture
def recipe(tmp_path):
    """A copy of the committed recipe search: tmp_path holding recipe.json and recipe/ (candidates, lambda/)."""
    shutil.copytree(os.path.join(COMMITTED, "recipe"), tmp_path / "recipe")
    shutil.copy(os.path.join(COMMITTED, "recipe.json"), tmp_path / "recipe.json")
    return tmp_path


def test_recipe_json_is_checked_against_its_runs(recipe):
    """The committed recipe.json equals what its runs give; another chosen recipe or λ is named."""
    assert crosscheck.check_tree(str(recipe)) == []
    edit(recipe / "recipe.json", lambda doc: doc["lambdas"].update(l2=1e-4))
    problems = crosscheck.check_tree(str(recipe))
    assert len(problems) == 1 and "recipe.json: differs" in problems[0] and "lambdas" in problems[0], problems


def test_recipe_json_is_written_once(recipe, capsys):
    """Case 4: `choices.py recipe FOLDER base` (1 of the 4 candidates) is refused in one line and recipe.json stays;
    the same candidates rewrite nothing; --overwrite replaces it."""
    before = (recipe / "recipe.json").read_bytes()
    with pytest.raises(SystemExit) as e:
        choices.main(["recipe", str(recipe / "recipe"), "base"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "already holds another choice" in err and "--overwrite" in err, err
    assert (recipe / "recipe.json").read_bytes() == before
    choices.main(["recipe", str(recipe / "recipe"), "base", "nodrop", "rot10", "constmom"])
    assert json.loads((recipe / "recipe.json").read_bytes()) | {"schema": 2} == json.loads(before)
    choices.main(["recipe", str(recipe / "recipe"), "base", "--overwrite"])
    assert [c["name"] for c in json.loads((recipe / "recipe.json").read_text())["candidates"]] == ["base"]


# -----------------------------------------------------------------------------
# λ is tied to the weights

def test_a_relabelled_lambda_of_a_committed_run_fails(tmp_path, capsys):
    """Case 5: a copy of the committed l2.json with config.l2 x10 (and its checkpoints) fails verify.py, naming
    the penalty; the unedited copy passes."""
    r = json.load(open(os.path.join(COMMITTED, "l2.json")))
    for run in r["runs"]:
        shutil.copy(os.path.join(COMMITTED, run["checkpoint"]), tmp_path)
    (tmp_path / "l2.json").write_text(json.dumps(r))
    lines = verify.verify_tree(str(tmp_path), DATA)[0]
    assert not any("PENALTY" in line.upper() for line in lines), lines
    r["config"]["l2"] *= 10
    (tmp_path / "l2.json").write_text(json.dumps(r))
    lines = verify.verify_tree(str(tmp_path), DATA)[0]
    assert sum("PENALTY: L1 0, L2 0.003 GIVE" in line for line in lines) == 5, lines


@pytest.mark.parametrize("factor", [10, 2, 0.5, 0])
def test_a_relabelled_lambda_of_a_new_run_fails(run_train, tmp_path, capsys, factor):
    """Case 5: a real l2 run whose config.l2 is multiplied by 10, 2, 0.5 or 0 fails verify.py (exit 1, the
    penalty named); the run as written passes."""
    code, r = run_train("--variant", "l2", "--l2", "1e-2", *FAST, name="l2")
    assert code == 0
    capsys.readouterr()
    assert verify.main(["--results", str(tmp_path), "--data", DATA]) in (None, 0)
    r["config"]["l2"] *= factor
    (tmp_path / "l2.json").write_text(json.dumps(r))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        verify.main(["--results", str(tmp_path), "--data", DATA])
    out, err = capsys.readouterr()
    assert e.value.code == 1 and "PENALTY: L1 0, L2" in out, (out, err)


# -----------------------------------------------------------------------------
# symbolic links: refused by every reader and by the verifier

def test_a_symlinked_folder_is_refused_everywhere(copy, tmp_path_factory, capsys):
    """Case 3: results/datasize as a link to a copy: verify.py and report.py each stop in one line naming it
    (exit 2), and nothing is written."""
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "datasize"
    shutil.move(str(copy / "datasize"), elsewhere)
    os.symlink(elsewhere, copy / "datasize")
    for main in (verify.main, report.main):
        with pytest.raises(SystemExit) as e:
            main(["--results", str(copy)])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and f"{copy / 'datasize'} is a symbolic link" in err[0], err
    assert not (copy / "REPORT.md").exists()


def test_the_main_studys_files_are_what_make_trains(tmp_path, monkeypatch):
    """In the repository's results/, a variant's file relabelled to other λ's (consistently, weights untouched by
    this check) or trained for other epochs is named; the committed files pass; a user's folder is not held to it."""
    monkeypatch.setattr(results, "REPO", str(tmp_path))
    os.makedirs(tmp_path / "results")
    l2 = json.load(open(os.path.join(COMMITTED, "l2.json")))
    (tmp_path / "results" / "l2.json").write_text(json.dumps(l2))
    assert crosscheck.check_study(str(tmp_path / "results")) == []
    l2["config"] |= {"l2": 1e-3, "epochs": 20}
    (tmp_path / "results" / "l2.json").write_text(json.dumps(l2))
    problems = crosscheck.check_tree(str(tmp_path / "results"))
    assert len(problems) == 1 and "not what `make l2` trains" in problems[0], problems
    assert "epochs (15 -> 20)" in problems[0] and "l2 (0.0003 -> 0.001)" in problems[0], problems
    os.rename(tmp_path / "results", tmp_path / "try")
    assert crosscheck.check_tree(str(tmp_path / "try")) == []
