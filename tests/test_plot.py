"""plot.py: renders every figure and the report from JSON and checkpoints alone, with numbers equal to the JSON."""
import json
import os
import subprocess
import sys
from dataclasses import asdict

import matplotlib.image
import pytest
import torch

import data
import model
import plot
import results
from conftest import DATA, ROOT
from train import Config

N_TEST = 200
EVAL_BATCH = 50  # not the training batch: plot.py must evaluate with eval_batch_size, as train.py does


def make_result(folder, variant, finals, mnist, l1=0.0, l2=0.0, epochs=3):
    """A synthetic schema-2 result whose checkpoints are real (untrained) nets, so grids and weights can be checked;
    variants with an L1 penalty get soft-thresholded weights (exact zeros), as a strong L1 pull would leave."""
    cfg = asdict(Config(variant=variant, epochs=epochs, seeds=list(finals), l1=l1, l2=l2, test_limit=N_TEST,
                        eval_batch_size=EVAL_BATCH))
    runs = []
    for seed, final in finals.items():
        torch.manual_seed(seed)
        net = model.Net()
        with torch.no_grad():
            for w in (p for p in net.parameters() if p.dim() == 4 and l1):
                w.copy_(w.sign() * (w.abs() - 0.3 * w.abs().max()).clamp(min=0))
            net.eval()
            preds = torch.cat([net(data.to_float(mnist[2][:N_TEST][i:i + EVAL_BATCH], cfg["normalize"]).contiguous(
                memory_format=torch.channels_last)).argmax(1) for i in range(0, N_TEST, EVAL_BATCH)])
        ckpt = os.path.join(folder, f"{variant}-seed{seed}-0000000{seed}.pt")
        torch.save(net.state_dict(), ckpt)
        norms = {k.split(".")[0]: w.norm().item() for k, w in net.state_dict().items() if w.dim() == 4}  # conv1..conv9
        labels = mnist[3][:N_TEST].long()
        wrong = (preds != labels).nonzero().flatten().tolist()
        accs = [final - 0.3, final + 0.1, final, final][:epochs - 1] + [final]
        lrs = [0.05, 0.1, 0.01, 0.001][:epochs - 1] + [1e-6]
        runs.append({"seed": seed, "status": "ok", "pack_size": 1, "epochs": [
            {"epoch": e + 1, "train_loss": 0.1 / (e + 1), "penalty": 0.01, "train_acc": 98.0, "test_loss": 0.05 / (e + 1),
             "test_acc": a, "lr": lr, "momentum": 0.9, "seconds": 10.0,
             "weight_norm": {k: v * (1 + 0.2 * (epochs - 1 - e)) for k, v in norms.items()}}
            for e, (a, lr) in enumerate(zip(accs, lrs))],
            "final_test_acc": final, "test_correct": 0, "best_test_acc": max(accs), "best_epoch": 2,
            "first_epoch_at_99_4": None, "near_zero_fraction": model.near_zero_fraction(net.state_dict()),
            "misclassified": [{"index": i, "label": int(labels[i]), "pred": int(preds[i])} for i in wrong],
            "checkpoint": os.path.relpath(ckpt, ROOT), "env": {"command": "synthetic", "device": "cpu"}})
    result = {"schema": results.SCHEMA, "variant": variant, "config": cfg,
              "env": {"command": "synthetic", "device": "cpu", "git_commit": None, "torch": torch.__version__},
              "runs": runs, "summary": results.summarize(runs)}
    with open(os.path.join(folder, f"{variant}.json"), "w") as f:
        json.dump(result, f)
    return result


@pytest.fixture
def two_variants(tmp_path, mnist):
    make_result(str(tmp_path), "none", {0: 99.40, 1: 99.30}, mnist)
    make_result(str(tmp_path), "l1", {0: 99.50, 1: 99.45}, mnist, l1=1e-5)
    return tmp_path


def width(path):
    return matplotlib.image.imread(path).shape[1]


def report_lines(folder):
    """REPORT.md without its header row, which names the '±' column."""
    return [line for line in (folder / "REPORT.md").read_text().splitlines() if not line.startswith("| variant |")]


# -----------------------------------------------------------------------------
# what is rendered

def test_renders_every_file(two_variants):
    """Two variants x two seeds render loss, accuracy, both grids and the report, each a real file."""
    plot.main(["--results", str(two_variants), "--data", DATA])
    for name in ["loss.png", "accuracy.png", "misclassified_none.png", "misclassified_l1.png", "REPORT.md"]:
        assert os.path.getsize(two_variants / name) > 1000, f"{name}: {os.path.getsize(two_variants / name)} bytes"
    h, w = matplotlib.image.imread(two_variants / "misclassified_l1.png").shape[:2]
    assert h >= 500 and w >= 500, f"grid is {w}x{h} pixels, < 500x500"
    assert not [f for f in os.listdir(two_variants) if ".tmp" in f], "temporary files left behind"


def test_new_figures_render(two_variants):
    """Weights, norms and paired differences render from two variants x two seeds, each at least 400 px wide."""
    plot.main(["--results", str(two_variants), "--data", DATA])
    widths = {name: width(two_variants / name) for name in ["weights.png", "norms.png", "differences.png"]}
    assert min(widths.values()) >= 400, f"widths {widths} px, want >= 400"


def test_norms_skip_files_without_weight_norm(two_variants):
    """Epochs without weight_norm (files from before it was recorded) leave norms.png out instead of crashing."""
    for name in ("none", "l1"):
        r = json.loads((two_variants / f"{name}.json").read_text())
        for run in r["runs"]:
            for e in run["epochs"]:
                del e["weight_norm"]
        (two_variants / f"{name}.json").write_text(json.dumps(r))
    plot.main(["--results", str(two_variants), "--data", DATA])
    assert not (two_variants / "norms.png").exists()
    assert (two_variants / "weights.png").exists() and (two_variants / "differences.png").exists()


def test_default_folders_are_the_repositorys():
    """Left at their defaults, --results and --data are the repository's folders, not the working directory's."""
    args, _ = plot.parse_args([])
    assert (args.results, args.data) == (os.path.join(ROOT, "results"), os.path.join(ROOT, "data")), vars(args)


def test_another_working_directory_gets_no_data_folder(two_variants):
    """plot.py started from another folder reads MNIST from the repository and creates no data/ there."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), "--results", str(two_variants)],
                       cwd=two_variants, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (two_variants / "data").exists(), os.listdir(two_variants)


# -----------------------------------------------------------------------------
# the report

def test_report_numbers_equal_the_json(two_variants):
    """The report's mean ± std, min and paired difference are those of the JSON, to two decimals."""
    plot.main(["--results", str(two_variants), "--data", DATA])
    text = (two_variants / "REPORT.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| l1 |"))
    assert "| 99.47 ± 0.04 | 99.45 | 99.50 |" in row, row
    # paired differences: 0.10 and 0.15 -> mean 0.125, sd 0.0354, t(1) = 12.706 -> half-width 0.318
    assert "**l1** − none = +0.12 points, 95% paired t-interval [-0.19, +0.44] over 2 seeds" in text
    assert "not distinguishable from noise" in text


def test_report_refuses_runs_trained_differently(tmp_path, mnist):
    """A variant trained for other epochs than none is not compared: REPORT.md says why and gives no difference."""
    make_result(str(tmp_path), "none", {0: 99.40, 1: 99.30}, mnist)
    make_result(str(tmp_path), "l1", {0: 99.50, 1: 99.45}, mnist, l1=1e-5, epochs=4)
    plot.main(["--results", str(tmp_path), "--data", DATA])
    line = next(line for line in report_lines(tmp_path) if line.startswith("- **l1**"))
    assert "cannot be compared" in line and "epochs" in line, line
    assert "points" not in line and "interval" not in line, line
    assert width(tmp_path / "differences.png") >= 400  # rendered, with l1 left out and a note saying why


def test_one_seed_has_no_plus_minus(tmp_path, mnist):
    """A single seed is printed as '99.50 (1 seed)', never as '± 0.00'."""
    make_result(str(tmp_path), "none", {0: 99.40}, mnist)
    make_result(str(tmp_path), "l1", {0: 99.50}, mnist, l1=1e-5)
    plot.main(["--results", str(tmp_path), "--data", DATA])
    lines = report_lines(tmp_path)
    assert not [line for line in lines if "±" in line], [line for line in lines if "±" in line]
    row = next(line for line in lines if line.startswith("| l1 |"))
    assert "| 99.50 (1 seed) |" in row, row


# -----------------------------------------------------------------------------
# what is refused

def test_misclassified_list_must_match_checkpoint(two_variants):
    """A JSON whose misclassified list disagrees with its checkpoint is an error, not a wrong picture."""
    path = two_variants / "l1.json"
    r = json.loads(path.read_text())
    r["runs"][1]["misclassified"] = r["runs"][1]["misclassified"][1:]
    path.write_text(json.dumps(r))
    with pytest.raises(results.ResultsError, match="seed 1 disagrees with"):
        plot.render(str(two_variants), DATA)


@pytest.mark.parametrize("content,message", [
    ("", "not valid JSON"), ("{broken", "not valid JSON"), ('{"schema": 99, "runs": []}', "schema 99"),
    ('[1, 2]', "schema None"), ('{"schema": 2}', "no runs"),
])
def test_bad_json_is_a_one_line_error(tmp_path, content, message):
    """A malformed JSON gives one line naming the file and exit 2; no figure is written."""
    (tmp_path / "l1.json").write_text(content)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), "--results", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "l1.json" in r.stderr and message in r.stderr, r.stderr
    assert os.listdir(tmp_path) == ["l1.json"]


def test_empty_results_folder(tmp_path, capsys):
    """No JSON at all: a one-line error that says what to run."""
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(tmp_path)])
    assert e.value.code == 2 and "make l1" in capsys.readouterr().err


def test_missing_data_folder_is_refused(two_variants, capsys):
    """A --data folder that does not exist is a one-line error, not a download into a new folder."""
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(two_variants), "--data", str(two_variants / "nodata")])
    assert e.value.code == 2 and "not a directory" in capsys.readouterr().err
    assert not (two_variants / "nodata").exists()


def test_diverged_run_is_shown_not_fatal(tmp_path, mnist):
    """A variant whose seeds all diverged renders as "diverged" in the report instead of crashing plot.py."""
    make_result(str(tmp_path), "none", {0: 99.40, 1: 99.30}, mnist)
    r = make_result(str(tmp_path), "l2", {0: 99.0, 1: 99.0}, mnist, l2=1e30)
    for run in r["runs"]:
        run.update(status="diverged", diverged_epoch=2)
        run["epochs"][1].update(train_loss=None, test_loss=None)
        del run["epochs"][2]
    r["summary"] = results.summarize(r["runs"])
    (tmp_path / "l2.json").write_text(json.dumps(r))
    plot.main(["--results", str(tmp_path), "--data", DATA])
    row = next(line for line in (tmp_path / "REPORT.md").read_text().splitlines() if line.startswith("| l2 |"))
    assert "diverged" in row, row


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
    plot.main(["--results", str(two_variants), "--data", DATA])
    text = (two_variants / "REPORT.md").read_text()
    assert "| base (chosen) | – | 2 | 99.30, 99.40 | 99.350 |" in text, text
    assert "| rot10 | rotate_deg (7.0 -> 10.0) | 2 | 99.20, 99.30 | 99.250 |" in text, text
    assert "| l1 | 3e-05 | 2 | 99.31, 99.33 | 99.320 |" in text and "Chosen: l1 = 3e-05, l2 = none passed." in text, text


def test_damaged_recipe_json_is_a_one_line_error(two_variants):
    """A recipe.json without candidates stops plot.py with one line naming it and the repair."""
    (two_variants / "recipe.json").write_text('{"rule": "x"}')
    r = subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), "--results", str(two_variants), "--data", DATA],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "recipe.json" in r.stderr and "make recipe" in r.stderr, r.stderr


def test_verify_reevaluates_every_checkpoint(run_train, tmp_path, capsys):
    """`plot.py --verify` passes a real run and exits 1, naming the seed, once its JSON claims another accuracy."""
    code, res = run_train("--variant", "none", "--epochs", "1", "--seeds", "0,1")
    assert code == 0
    plot.main(["--verify", "--results", str(tmp_path), "--data", DATA])
    assert "all 2 checkpoints re-evaluate" in capsys.readouterr().out
    res["runs"][1]["final_test_acc"] += 0.01
    (tmp_path / "none.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit) as e:
        plot.main(["--verify", "--results", str(tmp_path), "--data", DATA])
    out, err = capsys.readouterr()
    assert e.value.code == 1 and "1 of 2 checkpoints" in err, err
    assert "none seed 1:" in out and "DIFFERS FROM" in out, out
