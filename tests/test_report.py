"""report.py: REPORT.md from the results JSON files alone, its numbers those of the JSON, comparisons only between
runs trained alike, words that say which split the numbers are on, and one line for every way it can fail."""
import errno
import json
import os
from dataclasses import asdict

import pytest

import report
import results
from conftest import make_result, one_line_error, with_diverged_variant
from train import Config


def write_report(folder):
    """report.py on folder -> REPORT.md's lines."""
    report.main(["--results", str(folder)])
    return (folder / "REPORT.md").read_text().splitlines()


def line_of(lines, start):
    return next(line for line in lines if line.startswith(start))


# -----------------------------------------------------------------------------
# the numbers

def test_report_numbers_equal_the_json(two_variants):
    """The table's mean ± std, min and max are those of the JSON's summary, to two decimals."""
    row = line_of(write_report(two_variants), "| l1 |")
    s = json.loads((two_variants / "l1.json").read_text())["summary"]
    want = (f"| {s['final_test_acc_mean']:.2f} ± {s['final_test_acc_std']:.2f} | {s['final_test_acc_min']:.2f} "
            f"| {s['final_test_acc_max']:.2f} |")
    assert want == "| 99.47 ± 0.04 | 99.45 | 99.50 |" and want in row, row


def test_paired_difference_by_hand(two_variants):
    """l1 − none over seeds 0 and 1 (+0.10, +0.15): mean +0.125, t(1) = 12.706 × sd 0.0354 / √2 = ±0.318; t = 5.0
    on 1 degree of freedom gives p = 0.126, which a family of one leaves as it is: not distinguishable."""
    text = "\n".join(write_report(two_variants))
    assert ("**l1** − none = +0.12 points, 95% paired t-interval [-0.19, +0.44] over 2 seeds, p = 0.126 (Holm: 0.126): "
            "l1 is not distinguishable from none.") in text, text
    assert "| +0.12 [-0.19, +0.44] |" in line_of(text.splitlines(), "| l1 |")


def test_targets_are_judged_on_the_mean(tmp_path, mnist):
    """On the whole test set, each variant's line says whether its seed mean reaches the target of its norm (99.45%
    with BatchNorm), and by how much it misses it."""
    make_result(tmp_path, "none", {0: 99.40, 1: 99.30}, mnist, test_limit=0)
    make_result(tmp_path, "l1", {0: 99.50, 1: 99.45}, mnist, l1=1e-5, test_limit=0)
    lines = write_report(tmp_path)
    assert "misses the 99.45% target (mean, final epoch) by 0.100 points" in line_of(lines, "- **none**")
    assert "reaches the 99.45% target" in line_of(lines, "- **l1**")


def test_no_target_is_claimed_for_a_slice(two_variants):
    """Runs on a slice (here 2,000 test images) are never said to reach or miss the study's targets."""
    lines = write_report(two_variants)
    assert not any("target" in line for line in lines if line.startswith("- **")), lines


def test_runs_trained_differently_are_not_compared(tmp_path, mnist):
    """A variant trained for other epochs and another lr than none gets no difference; its line names both keys."""
    make_result(tmp_path, "none", {0: 99.40, 1: 99.30}, mnist)
    make_result(tmp_path, "l1", {0: 99.50, 1: 99.45}, mnist, l1=1e-5, epochs=4, lr=0.05)
    lines = write_report(tmp_path)
    line = line_of(lines, "- **l1**")
    assert "cannot be compared" in line and "epochs (4 -> 3)" in line and "lr (0.05 -> 0.1)" in line, line
    assert "points" not in line and "interval" not in line, line
    assert "| – |" in line_of(lines, "| l1 |"), line_of(lines, "| l1 |")


def test_one_seed_has_no_plus_minus(tmp_path, mnist):
    """A single seed is printed as '99.50 (1 seed)', never as '± 0.00', and its difference has no interval."""
    make_result(tmp_path, "none", {0: 99.40}, mnist)
    make_result(tmp_path, "l1", {0: 99.50}, mnist, l1=1e-5)
    lines = [line for line in write_report(tmp_path) if not line.startswith("| variant |")]  # header names '±'
    assert not [line for line in lines if "±" in line], [line for line in lines if "±" in line]
    assert "| 99.50 (1 seed) |" in line_of(lines, "| l1 |"), line_of(lines, "| l1 |")
    assert "on seed 0 alone; with one seed there is no interval" in line_of(lines, "- **l1**")


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_diverged_run_is_shown_not_fatal(tmp_path, mnist):
    """A variant whose seeds all diverged is a row saying "diverged", not a crash and not a numpy warning."""
    with_diverged_variant(tmp_path, mnist)
    lines = write_report(tmp_path)
    assert "| diverged (2 diverged) |" in line_of(lines, "| l2 |"), line_of(lines, "| l2 |")
    assert "final test accuracy diverged" in line_of(lines, "- **l2**"), line_of(lines, "- **l2**")


# -----------------------------------------------------------------------------
# the splits and the validation search

def test_a_validation_folder_says_validation(tmp_path, mnist):
    """A folder of --val runs reports validation accuracy: never "final test accuracy", no test-set target."""
    make_result(tmp_path, "none", {0: 99.40, 1: 99.30}, mnist, val=True)
    make_result(tmp_path, "l1", {0: 99.50, 1: 99.45}, mnist, l1=1e-5, val=True)
    text = "\n".join(write_report(tmp_path))
    assert "final validation accuracy" in text and "on the validation split" in text, text
    assert "final test" not in text and "test split" not in text and "target" not in text, text


def test_report_shows_the_validation_search(two_variants):
    """With a recipe.json beside the results, REPORT.md ends with the search and the lambda step, numbers as written."""
    base = asdict(Config(variant="none", val=True))
    recipe = {"schema": results.SCHEMA, "rule": "best mean", "chosen": "base", "lambda_rule": "largest within 0.05",
              "candidates": [{"name": "base", "config": base, "seeds": [0, 1], "val_acc": [99.30, 99.40], "val_acc_mean": 99.35},
                             {"name": "rot10", "config": base | {"rotate_deg": 10.0}, "seeds": [0, 1],
                              "val_acc": [99.20, 99.30], "val_acc_mean": 99.25}],
              "lambda_points": [{"penalty": "l1", "lambda": 3e-5, "seeds": [0, 1], "val_acc": [99.31, 99.33],
                                 "val_acc_mean": 99.32}],
              "lambdas": {"l1": 3e-5, "l2": None}}
    (two_variants / "recipe.json").write_text(json.dumps(recipe))
    text = "\n".join(write_report(two_variants))
    assert "## How the recipe and the λ's were chosen (validation split only)" in text, text
    assert "| base (chosen) | – | 2 | 99.30, 99.40 | 99.350 |" in text, text
    assert "| rot10 | rotate_deg (7.0 -> 10.0) | 2 | 99.20, 99.30 | 99.250 |" in text, text
    assert "| l1 | 3e-05 | 2 | 99.31, 99.33 | 99.320 |" in text and "Chosen: l1 = 3e-05, l2 = none passed." in text, text


def test_no_recipe_json_no_search_section(two_variants):
    """Without a recipe.json there is no validation-search section."""
    assert not [line for line in write_report(two_variants) if line.startswith("## How the recipe")]


# -----------------------------------------------------------------------------
# what is refused

GOOD_RECIPE = {"rule": "r", "chosen": "base", "lambda_rule": "l", "lambdas": {"l1": 3e-5},
               "candidates": [{"name": "base", "config": {}, "seeds": [0], "val_acc": [99.3], "val_acc_mean": 99.3}],
               "lambda_points": [{"penalty": "l1", "lambda": 3e-5, "seeds": [0], "val_acc": [99.3], "val_acc_mean": 99.3}]}
DAMAGED_RECIPES = {
    "truncated": ('{"rule": "x", "cand', "not valid JSON"),
    "no candidates": ('{"rule": "x"}', "no candidates"),
    "a candidate without its config": (json.dumps(GOOD_RECIPE | {"candidates": [{"name": "base", "seeds": [0],
                                       "val_acc": [99.3], "val_acc_mean": 99.3}]}), "lacks what `make recipe` writes"),
    "lambdas without their points": (json.dumps({k: v for k, v in GOOD_RECIPE.items() if k != "lambda_points"}),
                                      "lacks what `make recipe` writes"),
    "no rule": (json.dumps({k: v for k, v in GOOD_RECIPE.items() if k != "rule"}), "lacks what `make recipe` writes"),
}


def test_the_undamaged_recipe_renders(two_variants):
    """The recipe.json the damaged ones below are cut from renders (so each refusal is the damage's doing)."""
    (two_variants / "recipe.json").write_text(json.dumps(GOOD_RECIPE))
    assert "| base (chosen) | – | 1 | 99.30 | 99.300 |" in write_report(two_variants)


@pytest.mark.parametrize("damage", list(DAMAGED_RECIPES))
def test_damaged_recipe_json_is_a_one_line_error(two_variants, capsys, damage):
    """A recipe.json cut short or lacking what `make recipe` writes stops report.py with exit 2 and one line naming
    it and the repair; no REPORT.md is written."""
    content, message = DAMAGED_RECIPES[damage]
    (two_variants / "recipe.json").write_text(content)
    with pytest.raises(SystemExit) as e:
        report.main(["--results", str(two_variants)])
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(two_variants / "recipe.json") in err and message in err, err
    assert "make recipe" in err and not (two_variants / "REPORT.md").exists(), err


def test_empty_folder_is_a_one_line_error(tmp_path, capsys):
    """No results JSON: exit 2, one line that says what to run."""
    with pytest.raises(SystemExit) as e:
        report.main(["--results", str(tmp_path)])
    err = one_line_error(capsys)
    assert e.value.code == 2 and "make l1" in err, err


def test_unwritable_folder_is_exit_1(two_variants, capsys, monkeypatch):
    """A read-only results folder (EROFS when writing REPORT.md): exit 1, one line naming the file and the cause."""
    def read_only(path, blob):
        raise OSError(errno.EROFS, "Read-only file system", path)
    monkeypatch.setattr(results, "write_bytes", read_only)
    with pytest.raises(SystemExit) as e:
        report.main(["--results", str(two_variants)])
    err = one_line_error(capsys)
    assert e.value.code == 1 and "Read-only file system" in err and str(two_variants / "REPORT.md") in err, err


def test_ctrl_c_is_exit_130(two_variants, capsys, monkeypatch):
    """Ctrl-C while the report is composed: exit 130, one line, no REPORT.md."""
    def interrupt(*a):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "report", interrupt)
    with pytest.raises(SystemExit) as e:
        report.main(["--results", str(two_variants)])
    err = one_line_error(capsys)
    assert e.value.code == 130 and "interrupted" in err, err
    assert not (two_variants / "REPORT.md").exists()


def test_default_folder_is_the_repositorys(monkeypatch, capsys):
    """Left at its default, --results is the repository's results/, not the working directory's."""
    seen = []

    def load_folder(folder):
        seen.append(folder)
        raise results.ResultsError("stop here")
    monkeypatch.setattr(results, "load_folder", load_folder)
    monkeypatch.chdir("/")
    with pytest.raises(SystemExit):
        report.main([])
    assert seen == [os.path.join(results.REPO, "results")], seen
