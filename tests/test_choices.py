"""The choices' files: recipe.json is written only from inputs that pass their checks, once, and the committed
validation search reproduces it (choices.py)."""
import json
import os
import shutil

import pytest

import choices
import results
import rules
from conftest import FP32, ROOT

FAST = ["--epochs", "1", "--train-limit", "64", "--test-limit", "64", *FP32]



def val_run(run_train, folder, name, *args, variant="none"):
    """A real --val run (64 images, 1 epoch) written as folder/<name>.json."""
    code, res = run_train("--variant", variant, *FAST, "--val", "--name", name, *args, out=folder, name=name)
    assert res is not None, code
    return res


@pytest.fixture
def search(run_train, tmp_path):
    """tmp_path/recipe holding two real candidates, base and nodrop (--dropout 0); recipe.json goes to tmp_path."""
    folder = tmp_path / "recipe"
    val_run(run_train, folder, "base")
    val_run(run_train, folder, "nodrop", "--dropout", "0")
    return folder


def test_recipe_then_lambdas_are_written_from_checked_inputs(search, run_train):
    """`make recipe` then `make lambdas`: write_recipe writes ../recipe.json naming the chosen candidate, then, with
    a lambda run under the chosen recipe in lambda/, a lambda per penalty as well."""
    first = choices.write_recipe(str(search), ["base", "nodrop"])
    assert first["chosen"] in ("base", "nodrop") and first["lambdas"] is None, first["chosen"]
    assert [c["name"] for c in first["candidates"]] == ["base", "nodrop"]
    dropout = ["--dropout", "0"] if first["chosen"] == "nodrop" else []
    val_run(run_train, search / "lambda", "l1-1e-4", "--l1", "1e-4", *dropout, variant="l1")
    out = choices.write_recipe(str(search), ["base", "nodrop"])
    written = json.loads((search.parent / "recipe.json").read_text())
    assert written == out and written["chosen"] == first["chosen"], written["chosen"]
    assert set(written["lambdas"]) == {"l1", "l2"} and [p["lambda"] for p in written["lambda_points"]] == [1e-4]


def recipe_refused(folder, order, *words):
    """write_recipe raises one line holding every word, and recipe.json beside folder stays as it was."""
    path = folder.parent / "recipe.json"
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(results.ResultsError) as e:
        choices.write_recipe(str(folder), order)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and all(w in message for w in words), message
    assert (path.read_bytes() if path.exists() else None) == before, "recipe.json changed"


def test_a_lambda_run_on_the_test_split_is_refused(search, run_train):
    """A lambda run without --val would choose lambda on the test set: refused, naming its file; no recipe.json."""
    run_train("--variant", "l1", *FAST, "--l1", "3e-4", "--name", "l1-3e-4", out=search / "lambda", name="l1-3e-4")
    recipe_refused(search, ["base", "nodrop"], str(search / "lambda" / "l1-3e-4.json"), "not a validation run")


@pytest.mark.parametrize("flag,value,key", [("--epochs", "2", "epochs"), ("--seeds", "0,1", "seeds")])
def test_a_candidate_on_other_terms_is_refused(search, run_train, flag, value, key):
    """A candidate with other epochs or other seeds than the first is refused, naming its file and the key."""
    val_run(run_train, search, "rot10", "--rotate-deg", "10", flag, value)
    recipe_refused(search, ["base", "nodrop", "rot10"], str(search / "rot10.json"), f"has {key}")


def test_a_lambda_run_under_another_recipe_is_refused(search, run_train):
    """A lambda run trained with --dropout 0 while the chosen recipe keeps the default dropout is refused,
    naming its file and the difference; a passing recipe.json from before stays byte for byte."""
    choices.write_recipe(str(search), ["base"])  # base alone: the chosen recipe keeps dropout 0.05
    val_run(run_train, search / "lambda", "l2-1e-4", "--l2", "1e-4", "--dropout", "0", variant="l2")
    recipe_refused(search, ["base"], str(search / "lambda" / "l2-1e-4.json"), "another recipe", "dropout (0.05 -> 0.0)")


def test_candidates_that_all_diverged_are_refused(run_train, tmp_path):
    """When every seed of every candidate diverged there is nothing to choose: refused in one line naming their files."""
    folder = tmp_path / "recipe"
    val_run(run_train, folder, "hot", "--lr", "1e30")
    val_run(run_train, folder, "hotter", "--lr", "1e31")
    diverged = {n: json.loads((folder / f"{n}.json").read_text())["summary"]["diverged"] for n in ("hot", "hotter")}
    assert diverged == {"hot": [0], "hotter": [0]}, diverged
    recipe_refused(folder, ["hot", "hotter"], "diverged", str(folder / "hot.json"), str(folder / "hotter.json"))


def test_a_diverged_candidate_is_never_chosen(search, run_train):
    """A candidate whose every seed diverged is listed as diverged and not chosen, even when listed first."""
    val_run(run_train, search, "hot", "--lr", "1e30")
    out = choices.write_recipe(str(search), ["hot", "base"])
    assert out["chosen"] == "base" and out["candidates"][0]["val_acc_mean"] is None, out["candidates"][0]


def test_the_recipe_command_refuses_in_one_line(search, run_train, capsys):
    """`python choices.py recipe` on a refused input exits 2 with one line naming the file; recipe.json absent."""
    run_train("--variant", "l1", *FAST, "--l1", "3e-4", "--name", "l1-3e-4", out=search / "lambda", name="l1-3e-4")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        choices.main(["recipe", str(search), "base", "nodrop"])
    message = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message.startswith("choices.py: error: ") and len(message.splitlines()) == 1, message
    assert str(search / "lambda" / "l1-3e-4.json") in message and not (search.parent / "recipe.json").exists()


def test_the_committed_validation_search_reproduces(tmp_path):
    """The rules applied to a copy of results/recipe choose the recipe and the lambdas results/recipe.json holds."""
    shutil.copytree(os.path.join(ROOT, "results", "recipe"), tmp_path / "recipe")
    committed = json.load(open(os.path.join(ROOT, "results", "recipe.json")))
    out = choices.write_recipe(str(tmp_path / "recipe"), ["base", "nodrop", "rot10", "constmom"])
    assert (out["chosen"], out["lambdas"]) == (committed["chosen"], committed["lambdas"])
    assert [c["val_acc_mean"] for c in out["candidates"]] == [c["val_acc_mean"] for c in committed["candidates"]]
    assert out["rule"] == rules.RECIPE_RULE == committed["rule"]
