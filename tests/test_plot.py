"""plot.py: renders every figure and the report from JSON alone, with numbers equal to the JSON."""
import json
import os
import subprocess
import sys

import pytest
import torch

import data
import plot
from conftest import DATA, ROOT
from model import Net
from train import Config
from dataclasses import asdict

N_TEST = 200


def make_result(folder, variant, finals, mnist, l1=0.0, l2=0.0):
    """A synthetic two-seed result whose checkpoints are real (untrained) nets, so the grids can be checked."""
    cfg = asdict(Config(variant=variant, epochs=3, seeds=list(finals), l1=l1, l2=l2, test_limit=N_TEST))
    runs = []
    for seed, final in finals.items():
        torch.manual_seed(seed)
        net = Net()
        ckpt = os.path.join(folder, f"{variant}-seed{seed}.pt")
        torch.save(net.state_dict(), ckpt)
        with torch.no_grad():
            net.eval()
            preds = torch.cat([net(data.to_float(mnist[2][:N_TEST][i:i + 32], cfg["normalize"]).contiguous(
                memory_format=torch.channels_last)).argmax(1) for i in range(0, N_TEST, 32)])
        labels = mnist[3][:N_TEST].long()
        wrong = (preds != labels).nonzero().flatten().tolist()
        accs = [final - 0.3, final + 0.1, final]
        runs.append({"seed": seed, "status": "ok", "epochs": [
            {"epoch": e + 1, "train_loss": 0.1 / (e + 1), "penalty": 0.01, "train_acc": 98.0, "test_loss": 0.05 / (e + 1),
             "test_acc": a, "lr": 0.01, "seconds": 10.0} for e, a in enumerate(accs)],
            "final_test_acc": final, "test_correct": 0, "best_test_acc": max(accs), "best_epoch": 2,
            "first_epoch_at_99_4": None, "misclassified": [{"index": i, "label": int(labels[i]), "pred": int(preds[i])}
                                                           for i in wrong],
            "checkpoint": os.path.relpath(ckpt, ROOT)})
    t = torch.tensor(list(finals.values()), dtype=torch.float64)
    result = {"schema": 1, "variant": variant, "config": cfg,
              "env": {"command": "synthetic", "device": "cpu", "git_commit": None, "torch": torch.__version__},
              "runs": runs, "summary": {"final_test_acc_mean": t.mean().item(), "final_test_acc_std": t.std().item(),
                                        "final_test_acc_min": t.min().item(), "final_test_acc_max": t.max().item(),
                                        "seeds": list(finals), "diverged": []}}
    json.dump(result, open(os.path.join(folder, f"{variant}.json"), "w"))
    return result


@pytest.fixture
def two_variants(tmp_path, mnist):
    make_result(str(tmp_path), "none", {0: 99.40, 1: 99.30}, mnist)
    make_result(str(tmp_path), "l1", {0: 99.50, 1: 99.45}, mnist, l1=1e-5)
    return tmp_path


def test_renders_every_file(two_variants):
    """Two variants x two seeds render loss, accuracy, both grids and the report, each a real file."""
    plot.main(["--results", str(two_variants), "--data", DATA])
    for name in ["loss.png", "accuracy.png", "misclassified_none.png", "misclassified_l1.png", "REPORT.md"]:
        assert os.path.getsize(two_variants / name) > 1000, name
    import matplotlib.image
    h, w = matplotlib.image.imread(two_variants / "misclassified_l1.png").shape[:2]
    assert h >= 500 and w >= 500, f"grid is {w}x{h} pixels, < 500x500"
    assert not [f for f in os.listdir(two_variants) if ".tmp" in f], "temporary files left behind"


def test_report_numbers_equal_the_json(two_variants):
    """The report's mean ± std, min and paired difference are those of the JSON, to two decimals."""
    plot.main(["--results", str(two_variants), "--data", DATA])
    text = (two_variants / "REPORT.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| l1 |"))
    assert "| 99.47 ± 0.04 | 99.45 | 99.50 |" in row, row
    # paired differences: 0.10 and 0.15 -> mean 0.125, sd 0.0354, t(1) = 12.706 -> half-width 0.318
    assert "**l1** − none = +0.12 points, 95% paired t-interval [-0.19, +0.44] over 2 seeds" in text
    assert "not distinguishable from noise" in text


def test_paired_interval_on_known_numbers():
    """Mean difference 1.0 with sd 1.0 over 5 pairs: t(4) = 2.776 gives 1.0 ± 1.2415."""
    mean, lo, hi = plot.paired_interval([1.0, 2.0, 3.0, 1.0, 3.0], [0.5, 0.5, 1.0, 1.0, 2.0])
    d = torch.tensor([0.5, 1.5, 2.0, 0.0, 1.0], dtype=torch.float64)
    half = 2.776 * d.std().item() / 5 ** 0.5
    assert mean == pytest.approx(1.0) and lo == pytest.approx(1.0 - half) and hi == pytest.approx(1.0 + half)
    assert plot.paired_interval([1.0], [0.5])[1] is None


def test_misclassified_list_must_match_checkpoint(two_variants):
    """A JSON whose misclassified list disagrees with its checkpoint is an error, not a wrong picture."""
    path = two_variants / "l1.json"
    r = json.loads(path.read_text())
    r["runs"][0]["misclassified"] = r["runs"][0]["misclassified"][1:]
    path.write_text(json.dumps(r))
    with pytest.raises(plot.ResultsError, match="disagrees with"):
        plot.render(str(two_variants), DATA)


@pytest.mark.parametrize("content,message", [
    ("", "not valid JSON"), ("{broken", "not valid JSON"), ('{"schema": 99, "runs": []}', "unknown schema 99"),
    ('[1, 2]', "unknown schema"), ('{"schema": 1}', "no runs"),
])
def test_bad_json_is_a_one_line_error(tmp_path, content, message):
    """A malformed JSON gives one line naming the file and exit 2; no figure is written."""
    (tmp_path / "l1.json").write_text(content)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), "--results", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "l1.json" in r.stderr and message in r.stderr
    assert os.listdir(tmp_path) == ["l1.json"]


def test_empty_results_folder(tmp_path, capsys):
    """No JSON at all: a one-line error that says what to run."""
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(tmp_path)])
    assert e.value.code == 2 and "make l1" in capsys.readouterr().err


def test_diverged_run_is_shown_not_fatal(tmp_path, mnist):
    """A variant whose seeds all diverged renders as "diverged" in the report instead of crashing plot.py."""
    make_result(str(tmp_path), "none", {0: 99.40, 1: 99.30}, mnist)
    r = make_result(str(tmp_path), "l2", {0: 99.0, 1: 99.0}, mnist, l2=1e30)
    for run in r["runs"]:
        run.update(status="diverged", diverged_epoch=2)
        run["epochs"][1].update(train_loss=None, test_loss=None)
        del run["epochs"][2]
    r["summary"].update(final_test_acc_mean=None, final_test_acc_std=None, final_test_acc_min=None,
                        final_test_acc_max=None, diverged=[0, 1])
    json.dump(r, open(tmp_path / "l2.json", "w"))
    plot.main(["--results", str(tmp_path), "--data", DATA])
    row = next(line for line in (tmp_path / "REPORT.md").read_text().splitlines() if line.startswith("| l2 |"))
    assert "diverged" in row
