"""Training: it learns, the same command gives the same numbers, the comparison is fair, and every number in
the JSON is what a direct computation gives."""
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import data
import loop
import model
import train
from conftest import DATA, FP32, METRICS, TRAIN_PY, checkpoint, metrics
from model import Net
from regularizers import VARIANTS


# -----------------------------------------------------------------------------
# it learns, and the same command gives the same numbers

def test_short_run_learns(run_train):
    """Two epochs on 2,000 real images reach far above chance (10%) on 320 test images."""
    code, res = run_train("--variant", "none", "--epochs", "2", "--train-limit", "2000")
    acc = res["runs"][0]["final_test_acc"]
    assert code == 0 and acc > 70, f"acc {acc:.2f} <= 70 after 2 epochs on 2,000 images"


def test_ghost_bn_run_learns(run_train):
    """A gbn run through train.py (virtual batches of 8) learns far above chance on a small slice."""
    code, res = run_train("--variant", "gbn", "--epochs", "2", "--train-limit", "2000", name="gbn")
    acc = res["runs"][0]["final_test_acc"]
    assert code == 0 and res["config"]["norm"] == "gbn" and acc > 70, f"gbn acc {acc:.2f} <= 70 after 2 epochs"


def test_same_command_same_numbers(run_train, tmp_path):
    """Two runs of the same command give identical metrics and byte-identical checkpoints; another seed differs."""
    _, a = run_train("--variant", "l1l2", "--epochs", "1", out=tmp_path / "a", name="l1l2")
    _, b = run_train("--variant", "l1l2", "--epochs", "1", out=tmp_path / "b", name="l1l2")
    _, c = run_train("--variant", "l1l2", "--epochs", "1", "--seeds", "1", out=tmp_path / "c", name="l1l2")
    assert metrics(a) == metrics(b) and metrics(a) != metrics(c)
    blobs = [open(checkpoint(tmp_path / d, r["runs"][0]), "rb").read() for d, r in (("a", a), ("b", b))]
    assert blobs[0] == blobs[1]


def test_same_command_same_numbers_across_processes(tmp_path):
    """The default (compiled, bf16) path run twice as a program: the same metrics and checkpoint bytes."""
    args = ["--variant", "none", "--epochs", "1", "--train-limit", "320", "--test-limit", "160", "--device", "cpu",
            "--data", DATA]
    for d in ("a", "b"):
        r = subprocess.run([sys.executable, TRAIN_PY, *args, "--out", str(tmp_path / d)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = (json.load(open(tmp_path / d / "none.json")) for d in "ab")
    assert a["config"]["compile"] and b["config"]["compile"], "the compiled path fell back to eager"
    assert metrics(a) == metrics(b)
    blobs = [open(checkpoint(tmp_path / d, r["runs"][0]), "rb").read() for d, r in (("a", a), ("b", b))]
    assert blobs[0] == blobs[1]


def test_huge_lambda_diverges(run_train):
    """A penalty that blows the weights up is recorded as diverged, and the exit code says so."""
    code, res = run_train("--variant", "l2", "--l2", "1e30", "--epochs", "2", *FP32, name="l2")
    assert code == 1
    assert res["runs"][0]["status"] == "diverged" and res["runs"][0]["diverged_epoch"] == 1
    assert res["summary"]["final_test_acc_mean"] is None


# -----------------------------------------------------------------------------
# fairness: for one seed every variant sees the same data, rotations and masks; only the penalty and norm differ

@pytest.fixture
def streams(monkeypatch):
    """Record, step by step, the uint8 images each run trains on, its rotation angles and its dropout bytes."""
    seen = []
    augment, angles, noise = data.augment, data.rotation_angles, model.PackedNet.draw_noise
    monkeypatch.setattr(data, "augment", lambda x, *a, **kw: seen[-1]["images"].append(x.clone()) or augment(x, *a, **kw))
    monkeypatch.setattr(data, "rotation_angles",
                        lambda *a, **kw: seen[-1]["angles"].append(angles(*a, **kw)) or seen[-1]["angles"][-1])

    def draw_noise(self, n):
        masks = noise(self, n)
        seen[-1]["masks"].append(torch.cat([m.flatten() for m in masks]))
        return masks
    monkeypatch.setattr(model.PackedNet, "draw_noise", draw_noise)

    def record(run_train, *args, **kw):
        seen.append({"images": [], "angles": [], "masks": []})
        assert run_train(*args, "--epochs", "1", "--train-limit", "96", "--test-limit", "64", *FP32, **kw)[0] == 0
        return seen[-1]
    return record


def same(a, b):
    return all(len(a[k]) == len(b[k]) and all(torch.equal(x, y) for x, y in zip(a[k], b[k])) for k in a)


def test_every_variant_sees_the_same_data_rotations_and_masks(run_train, tmp_path, streams):
    """For seed 0, every variant that trains alone (none_normmatch needs l2 in its pack) trains on the same images
    in the same order, with the same rotation angles and the same dropout bytes, step for step."""
    runs = {v: streams(run_train, "--variant", v, out=tmp_path / v, name=v) for v in VARIANTS if not VARIANTS[v].match_norms}
    first = runs["none"]
    assert len(first["images"]) == 3 and len(first["masks"]) == 3, {k: len(v) for k, v in first.items()}
    for v, seen in runs.items():
        assert same(seen, first), f"{v} saw other images, angles or masks than none"


def test_another_seed_sees_other_data_rotations_and_masks(run_train, tmp_path, streams):
    """Seeds 0 and 1 of one variant differ in data order, rotation angles and dropout bytes."""
    a = streams(run_train, "--variant", "none", out=tmp_path / "a")
    b = streams(run_train, "--variant", "none", "--seeds", "1", out=tmp_path / "b")
    for key in ("images", "angles", "masks"):
        assert not torch.equal(torch.cat([t.flatten().float() for t in a[key]]),
                               torch.cat([t.flatten().float() for t in b[key]])), f"seed 1 repeats seed 0's {key}"


def test_rotation_happens_within_its_range(run_train, tmp_path, streams, mnist):
    """Every image is rotated by its own angle within ±rotate_deg (both signs occur), and a rotated batch
    differs from the unrotated one; --rotate-deg 0 leaves the images as they are."""
    seen = streams(run_train, "--variant", "none", "--rotate-deg", "5", out=tmp_path / "r")
    deg = torch.cat([a.flatten() for a in seen["angles"]]).rad2deg()
    assert len(deg) == 96 and deg.abs().max() <= 5 and deg.min() < -1 and deg.max() > 1, deg
    norm = {"mean": 0.1307, "std": 0.3081}
    gens = [torch.Generator().manual_seed(0)]
    batch = seen["images"][0]
    rotated, plain = data.augment(batch, norm, 5.0, gens), data.augment(batch, norm, 0.0, gens)
    assert (rotated - plain).abs().max() > 0.5
    unrotated = streams(run_train, "--variant", "none", "--rotate-deg", "0", out=tmp_path / "z")
    assert unrotated["angles"] == []


def test_zero_lambda_reproduces_none(run_train, tmp_path):
    """With λ1 = 0, l1 computes exactly what none computes: the penalty is the only difference."""
    _, none = run_train("--variant", "none", "--epochs", "1", out=tmp_path / "n")
    _, l1 = run_train("--variant", "l1", "--l1", "0", "--epochs", "1", out=tmp_path / "l", name="l1")
    assert metrics(none) == metrics(l1)


# -----------------------------------------------------------------------------
# every number in the JSON against a direct computation

def test_json_has_every_promised_key(run_train):
    """Schema 3: config, env, per-run and per-epoch keys; the checkpoint is named relative to the JSON's folder."""
    code, res = run_train("--variant", "l2", "--epochs", "2", "--seeds", "0,1", *FP32, name="l2")
    assert code == 0 and res["schema"] == 3 and res["variant"] == "l2"
    assert {"normalize", "epochs", "seeds", "l1", "l2", "lr", "batch_size", "compile", "precision", "dropout_masks",
            "eval_batch_size", "cycle_momentum", "momentum_range"} <= set(res["config"])
    assert {"command", "git_commit", "torch", "device", "deterministic", "data_sha256", "started",
            "wall_s"} <= set(res["env"])
    assert [r["seed"] for r in res["runs"]] == [0, 1] and res["config"]["seeds"] == [0, 1]
    run = res["runs"][0]
    assert {"seed", "epochs", "final_test_acc", "test_correct", "best_test_acc", "best_epoch", "first_epoch_at_99_4",
            "misclassified", "checkpoint", "near_zero_fraction", "pack_size", "env"} <= set(run)
    assert [set(e) for e in run["epochs"]] == [{"epoch", *METRICS, "seconds"}] * 2
    assert os.path.basename(run["checkpoint"]) == run["checkpoint"] and run["checkpoint"].startswith("l2-seed0-")
    # the dropout probability that really ran: a multiple of 1/256 with byte masks
    assert run["dropout_p"] == 13 / 256 and run["epochs"][-1]["penalty"] > 0


def test_train_loss_and_accuracy_are_the_first_steps(run_train, tmp_path, mnist):
    """One step (32 images, no dropout, no rotation): the epoch's train loss and accuracy are those of the seed's
    initial Net on the batch its data generator picks, computed here from scratch."""
    code, res = run_train("--variant", "none", "--epochs", "1", "--train-limit", "32", "--dropout", "0",
                          "--rotate-deg", "0", "--no-channels-last", *FP32)
    loop.seed_everything(0)
    net = Net(0.0)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0 + 1_000_003))
    x, y = data.to_float(mnist[0][:32][order], {"mean": 0.1307, "std": 0.3081}), mnist[1][:32][order].long()
    logits = net.train()(x)
    epoch = res["runs"][0]["epochs"][0]
    assert code == 0 and epoch["train_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert epoch["train_acc"] == 100 * (logits.argmax(1) == y).sum().item() / 32


def test_test_numbers_are_the_checkpoints(run_train, tmp_path, mnist):
    """The final test loss, accuracy, correct count and misclassified list equal the checkpoint evaluated here;
    best_epoch is the epoch of the highest test accuracy; near_zero_fraction and the weight norms are the
    checkpoint's."""
    code, res = run_train("--variant", "l1", "--epochs", "3", "--test-limit", "160", *FP32, name="l1")
    run = res["runs"][0]
    sd = torch.load(checkpoint(tmp_path, run), weights_only=True)
    net = Net()
    net.load_state_dict(sd)
    x, y = data.to_float(mnist[2][:160], res["config"]["normalize"]), mnist[3][:160].long()
    with torch.no_grad():
        logits = net.eval()(x)
    pred = logits.argmax(1)
    assert code == 0 and run["epochs"][-1]["test_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert run["test_correct"] == (pred == y).sum().item() and run["final_test_acc"] == 100 * run["test_correct"] / 160
    assert run["misclassified"] == [{"index": i, "label": int(y[i]), "pred": int(pred[i])}
                                    for i in (pred != y).nonzero().flatten().tolist()]
    accs = [e["test_acc"] for e in run["epochs"]]
    assert run["best_epoch"] == accs.index(max(accs)) + 1 and run["best_test_acc"] == max(accs)
    convs = {k.split(".")[0]: w.double() for k, w in sd.items() if w.dim() == 4}
    for name, w in convs.items():
        assert run["epochs"][-1]["weight_norm"][name] == pytest.approx(torch.linalg.norm(w.flatten()).item(), rel=1e-6)
    small = sum((w.abs() < 0.01 * w.abs().max()).sum().item() for w in convs.values())
    assert run["near_zero_fraction"] == pytest.approx(small / sum(w.numel() for w in convs.values()), rel=1e-12)


def test_env_records_the_device_pack_and_determinism_that_ran(run_train, capsys):
    """env: deterministic on, the device and pack size that ran; one seed prints without a ± (no spread)."""
    code, res = run_train("--variant", "l1", "--epochs", "1", "--test-limit", "160", *FP32, name="l1")
    out = capsys.readouterr().out
    assert code == 0 and "(1 seed)" in out and "±" not in out, out
    run = res["runs"][0]
    assert res["env"]["deterministic"] is True and run["env"]["deterministic"] is True
    assert run["pack_size"] == 1 and res["env"]["device"] == "cpu" and res["env"]["threads"] == torch.get_num_threads()


def test_without_git_the_commit_is_unknown(run_train, monkeypatch):
    """A machine without git (or a copied tree) still trains; the JSON records the commit as unknown (null)."""
    def no_git(cmd, **kw):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])
    monkeypatch.setattr(train.subprocess, "run", no_git)
    code, res = run_train("--variant", "none", "--epochs", "1", "--train-limit", "64", "--test-limit", "64", *FP32)
    assert code == 0 and res["env"]["git_commit"] is None and res["env"]["git_dirty"] is None


def test_data_sha256_names_the_files_read(run_train):
    """env.data_sha256 is the SHA-256 of the four files' SHA-256 hex digests, in the order train.py reads them."""
    _, res = run_train("--variant", "none", "--epochs", "1", "--train-limit", "64", "--test-limit", "64", *FP32)
    digests = [hashlib.sha256(open(os.path.join(DATA, "MNIST", "raw", n), "rb").read()).hexdigest() for n in data.FILES]
    assert res["env"]["data_sha256"] == hashlib.sha256("".join(digests).encode()).hexdigest()


def test_momentum_cycles_and_is_recorded(run_train, tmp_path):
    """With cycle_momentum each epoch records the momentum it started with (0.95, falling, within the range);
    without it the momentum is the configured constant."""
    _, cyc = run_train("--variant", "none", "--epochs", "3", "--train-limit", "320", "--test-limit", "64", *FP32,
                       out=tmp_path / "c")
    lo, hi = cyc["config"]["momentum_range"]
    m = [e["momentum"] for e in cyc["runs"][0]["epochs"]]
    assert cyc["config"]["cycle_momentum"] is True and (lo, hi) == (0.85, 0.95)
    assert m[0] == pytest.approx(hi) and m[1] < m[0] and all(lo - 1e-9 <= v <= hi + 1e-9 for v in m), m
    _, const = run_train("--variant", "none", "--epochs", "2", "--train-limit", "320", "--test-limit", "64", *FP32,
                         "--no-cycle-momentum", "--momentum", "0.8", out=tmp_path / "k")
    assert const["config"]["cycle_momentum"] is False
    assert [e["momentum"] for e in const["runs"][0]["epochs"]] == [0.8, 0.8]


def test_lambda_override_applies_only_to_variants_with_that_penalty(run_train, tmp_path):
    """`--variant none,l1 --l1 1e-3` trains none without a penalty and l1 with lambda_1 = 1e-3."""
    code, none = run_train("--variant", "none,l1", "--l1", "1e-3", "--epochs", "1", "--train-limit", "64",
                           "--test-limit", "64", *FP32)
    l1 = json.load(open(tmp_path / "l1.json"))
    assert code == 0 and none["config"]["l1"] == 0 and l1["config"]["l1"] == 1e-3
    assert none["runs"][0]["epochs"][0]["penalty"] == 0 and l1["runs"][0]["epochs"][0]["penalty"] > 0


def test_packed_seconds_are_the_pack_wall_over_k(run_train, monkeypatch):
    """Packed models share one wall clock: each records the pack's seconds divided by K, and pack_size K."""
    class Clock:  # every perf_counter() call in loop.py advances 6 s, so an epoch's wall is exactly 6 s
        now = 0.0

        @classmethod
        def perf_counter(cls):
            cls.now += 6.0
            return cls.now
        strftime = staticmethod(time.strftime)
    monkeypatch.setattr(loop, "time", Clock)
    code, res = run_train("--variant", "none", "--seeds", "0,1", "--packed", "--epochs", "2", "--train-limit", "64",
                          "--test-limit", "64", *FP32)
    assert code == 0 and [r["pack_size"] for r in res["runs"]] == [2, 2]
    assert [[e["seconds"] for e in r["epochs"]] for r in res["runs"]] == [[3.0, 3.0], [3.0, 3.0]]
    assert [r["env"]["wall_s"] for r in res["runs"]] == [6.0, 6.0]


def test_val_never_reads_the_test_set(run_train, monkeypatch, mnist):
    """--val evaluates on the last 10,000 training images: a garbage test set changes nothing it computes."""
    real, seen = data.load_mnist, []

    def garbage_test_set(*args, **kw):
        train_x, train_y, test_x, test_y = real(*args, **kw)
        return train_x, train_y, torch.full_like(test_x, 255), torch.zeros_like(test_y)
    evaluate = loop.evaluate
    monkeypatch.setattr(data, "load_mnist", garbage_test_set)
    monkeypatch.setattr(loop, "evaluate", lambda net, x, y, cfg: seen.append((x, y)) or evaluate(net, x, y, cfg))
    code, res = run_train("--variant", "none", "--val", "--epochs", "1", "--train-limit", "64", "--test-limit", "160",
                          *FP32)
    assert code == 0 and res["config"]["val"] is True and seen
    for x, y in seen:
        assert torch.equal(x.cpu(), mnist[0][50000:50160]) and torch.equal(y.cpu(), mnist[1][50000:50160])
    assert all(m["label"] == int(mnist[1][50000 + m["index"]]) for m in res["runs"][0]["misclassified"])


# -----------------------------------------------------------------------------
# torch.compile: used where it works, an eager fall-back (said and recorded) where it does not

def test_compile_falls_back_to_eager_without_a_compiler(tmp_path):
    """No working C++ compiler (and no cached kernels): the run trains eagerly, says so in one line, and the JSON
    records compile false and why."""
    env = {"CXX": "/nonexistent/c++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache")}
    r = subprocess.run([sys.executable, TRAIN_PY, "--variant", "none", "--epochs", "1", "--train-limit", "64",
                        "--test-limit", "64", "--device", "cpu", "--data", DATA, "--out", str(tmp_path)],
                       capture_output=True, text=True, env=dict(os.environ, **env))
    assert r.returncode == 0, r.stderr[-2000:]
    said = [line for line in r.stdout.splitlines() if "torch.compile does not work" in line]
    assert len(said) == 1, r.stdout
    res = json.load(open(tmp_path / "none.json"))
    assert res["config"]["compile"] is False and res["env"]["compile_fallback"]
    assert res["runs"][0]["env"]["compile_fallback"] == res["env"]["compile_fallback"]


def test_fallback_is_recorded_for_every_variant_and_seeds_can_be_added(run_train, tmp_path, monkeypatch):
    """After a fall-back every variant of a pack records compile false, and the same command with another seed
    adds it to the results file instead of refusing it as another config."""
    def no_compiler(*args, **kw):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
    monkeypatch.setattr(torch, "compile", no_compiler)
    args = ["--variant", "none,l1", "--packed", "--epochs", "1", "--train-limit", "64", "--test-limit", "64"]
    code, _ = run_train(*args, "--seeds", "0", compiled=True)
    assert code == 0
    code, _ = run_train(*args, "--seeds", "0,1", compiled=True)
    for name in ("none", "l1"):
        res = json.load(open(tmp_path / f"{name}.json"))
        assert code == 0 and res["config"]["compile"] is False and res["env"]["compile_fallback"]
        assert [r["seed"] for r in res["runs"]] == [0, 1]


def test_the_time_estimate_knows_the_thread_count(capsys, monkeypatch):
    """train.py's estimate: ~15 s per packed model-epoch with two threads, ~23 s with one (two processes side by
    side, as make all runs them), Ghost BN 1.5x; with one thread the same pack is expected to take longer."""
    cfgs = train.parse_args(["--variant", "none", "--seeds", "0,1", "--packed"])[0]
    packs = [([(cfgs[0], 0), (cfgs[0], 1)], "state.pt")]
    for threads, each, minutes in ((2, 15, "7.5"), (1, 23, "12")):  # 2 models x 15 epochs x each s
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        train.announce(cfgs[0], packs, 60000)
        line = capsys.readouterr().out
        assert f"expect ~{minutes} min on 2 CPU cores (~{each} s per model-epoch)" in line, line
