"""plot.py: draws every figure from the results JSON files and their checkpoints alone, evaluates nothing, writes
through results.py, and every way it can fail is one line with its own exit code."""
import errno
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

import data
import plot
import results
from conftest import DATA, ROOT, make_result, one_line_error, with_diverged_variant

FIGURES = ["loss.png", "accuracy.png", "norms.png", "weights.png", "differences.png", "misclassified_none.png",
           "misclassified_l1.png"]


def width(path):
    return matplotlib.image.imread(path).shape[1]


def pngs(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".png"))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, mnist):
    """two variants drawn once by `plot.py` with model.Net unable to build or run: (folder, its files before as
    {name: bytes}). The tests below each check one property of this one run."""
    import model

    def refuse(*a, **kw):
        raise AssertionError("plot.py built or ran a model")
    folder = tmp_path_factory.mktemp("drawn")
    make_result(folder, "none", {0: 99.40, 1: 99.30}, mnist)
    make_result(folder, "l1", {0: 99.50, 1: 99.45}, mnist, l1=1e-5)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(model.Net, "__init__", refuse)
        m.setattr(model.Net, "forward", refuse)
        plot.main(["--results", str(folder), "--data", DATA])
    return folder, before


# -----------------------------------------------------------------------------
# what is drawn

def test_renders_every_file(drawn):
    """Two variants x two seeds render every figure, each a real PNG, and no temporary file is left behind."""
    folder, _ = drawn
    assert pngs(folder) == sorted(FIGURES), pngs(folder)
    sizes = {name: os.path.getsize(folder / name) for name in FIGURES}
    assert min(sizes.values()) > 1000, sizes
    assert not [f for f in os.listdir(folder) if ".tmp" in f], "temporary files left behind"


def test_figures_are_large_enough_to_read(drawn):
    """The misclassified grid is at least 500x500 pixels; weights, norms and differences at least 400 wide."""
    folder, _ = drawn
    h, w = matplotlib.image.imread(folder / "misclassified_l1.png").shape[:2]
    assert h >= 500 and w >= 500, f"grid is {w}x{h} pixels, < 500x500"
    widths = {name: width(folder / name) for name in ["weights.png", "norms.png", "differences.png"]}
    assert min(widths.values()) >= 400, f"widths {widths} px, want >= 400"


def test_plot_draws_only(drawn):
    """plot.py writes figures and nothing else: no REPORT.md, the JSON files and checkpoints stay byte for byte,
    and no model is built or run (the misclassified digits are the JSON's lists)."""
    folder, before = drawn
    after = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.endswith(".png")}
    assert after == before and not (folder / "REPORT.md").exists(), sorted(after)


def test_rendering_in_another_process_gives_the_same_bytes(drawn):
    """plot.py run as a fresh program renders the same PNG bytes as the figures drawn in this process: no state of
    one process (a font cache, a random seed, a counter) leaks into a figure."""
    folder, _ = drawn
    before = {name: (folder / name).read_bytes() for name in FIGURES}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), "--results", str(folder), "--data", DATA],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    differ = [name for name in FIGURES if (folder / name).read_bytes() != before[name]]
    assert not differ, differ


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


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:All-NaN slice encountered")
def test_diverged_run_is_shown_not_fatal(tmp_path, mnist):
    """A variant whose seeds all diverged is drawn where it has epochs, without a misclassified grid, and does not
    stop the other figures."""
    with_diverged_variant(tmp_path, mnist)
    plot.main(["--results", str(tmp_path), "--data", DATA])
    assert pngs(tmp_path) == sorted(["loss.png", "accuracy.png", "norms.png", "weights.png", "differences.png",
                                     "misclassified_none.png"]), pngs(tmp_path)


def test_default_folders_are_the_repositorys(monkeypatch):
    """Left at their defaults, --results and --data are the repository's folders, not the working directory's."""
    seen = []
    monkeypatch.setattr(plot, "render", lambda folder, data_dir: seen.append((folder, data_dir)) or {})
    monkeypatch.chdir("/")
    plot.main([])
    assert seen == [(os.path.join(ROOT, "results"), os.path.join(ROOT, "data"))], seen


def test_another_working_directory_gets_no_data_folder(two_variants):
    """plot.py started from another folder reads MNIST from the repository and creates no data/ there."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), "--results", str(two_variants)],
                       cwd=two_variants, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (two_variants / "data").exists(), os.listdir(two_variants)


# -----------------------------------------------------------------------------
# what is refused: one line, an exit code per cause, no figure written

@pytest.mark.parametrize("content,message", [
    ("", "not valid JSON"), ("{broken", "not valid JSON"), ('{"schema": 99, "runs": []}', "schema 99"),
    ('[1, 2]', "schema None"), ('{"schema": 3}', "no runs"), ('{"schema": 2}', "schema 2, this code reads schema 3"),
])
def test_bad_json_is_a_one_line_error(tmp_path, capsys, content, message):
    """A malformed JSON gives one line naming the file and exit 2; no figure is written."""
    (tmp_path / "l1.json").write_text(content)
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(tmp_path), "--data", DATA])
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(tmp_path / "l1.json") in err and message in err, err
    assert os.listdir(tmp_path) == ["l1.json"]


def test_bad_json_is_one_line_from_the_command_line(tmp_path):
    """Run as a program, plot.py on a truncated JSON exits 2 with one line on stderr and no traceback."""
    (tmp_path / "l1.json").write_text("{broken")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), "--results", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "l1.json" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_truncated_checkpoint_is_a_one_line_error(two_variants, capsys):
    """A checkpoint cut short: exit 2, one line naming it; no figure is written."""
    name = json.loads((two_variants / "l1.json").read_text())["runs"][1]["checkpoint"]
    path = two_variants / name
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(two_variants), "--data", DATA])
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(path) in err and "damaged checkpoint" in err, err
    assert pngs(two_variants) == []


def test_missing_checkpoint_is_a_one_line_error(two_variants, capsys):
    """A checkpoint the JSON names but the folder lacks: exit 2, one line naming it."""
    name = json.loads((two_variants / "none.json").read_text())["runs"][0]["checkpoint"]
    os.remove(two_variants / name)
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(two_variants), "--data", DATA])
    err = one_line_error(capsys)
    assert e.value.code == 2 and str(two_variants / name) in err and "missing" in err, err


def test_empty_results_folder(tmp_path, capsys):
    """No JSON at all: exit 2, one line that says what to run."""
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(tmp_path)])
    err = one_line_error(capsys)
    assert e.value.code == 2 and "make l1" in err, err


def test_missing_data_folder_is_refused(two_variants, capsys):
    """A --data folder that does not exist is a one-line error, not a download into a new folder."""
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(two_variants), "--data", str(two_variants / "nodata")])
    err = one_line_error(capsys)
    assert e.value.code == 2 and "not a directory" in err, err
    assert not (two_variants / "nodata").exists()


def test_unwritable_folder_is_exit_1(two_variants, capsys, monkeypatch):
    """A read-only results folder (EROFS on the first write): exit 1, one line naming the file and the cause."""
    def read_only(path, blob):
        raise OSError(errno.EROFS, "Read-only file system", path)
    monkeypatch.setattr(plot, "render", lambda folder, data_dir: {"loss.png": b"png"})  # the writing is what counts
    monkeypatch.setattr(results, "write_bytes", read_only)
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(two_variants), "--data", DATA])
    err = one_line_error(capsys)
    assert e.value.code == 1 and "Read-only file system" in err and str(two_variants / "loss.png") in err, err


def test_ctrl_c_is_exit_130(two_variants, capsys, monkeypatch):
    """Ctrl-C while rendering: exit 130, one line, no figure written."""
    def interrupt(found):
        raise KeyboardInterrupt
    monkeypatch.setattr(plot, "plot_accuracy", interrupt)
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(two_variants), "--data", DATA])
    err = one_line_error(capsys)
    assert e.value.code == 130 and "interrupted" in err, err
    assert pngs(two_variants) == []


def test_data_error_is_a_one_line_error(two_variants, capsys, monkeypatch):
    """MNIST that cannot be read (data.DataError): exit 2, one line."""
    def broken(root, log=print, digests=None):
        raise data.DataError(f"{root}/MNIST/raw/t10k-images-idx3-ubyte does not match its SHA-256")
    monkeypatch.setattr(data, "load_mnist", broken)
    with pytest.raises(SystemExit) as e:
        plot.main(["--results", str(two_variants), "--data", DATA])
    err = one_line_error(capsys)
    assert e.value.code == 2 and "SHA-256" in err, err
