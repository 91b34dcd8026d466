"""Train one variant of the 8,286-parameter MNIST CNN over one or more seeds; the only writer of results/.

    python train.py --variant l1 --epochs 20 --seeds 0,1,2
    python train.py --variant l2 --l2 3e-4 --val --name l2-3e-4 --out results/sweep   # a validation run
    python train.py --variant l1 --resume          # continue a killed run exactly where it stopped
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import model as model_lib
from regularizers import VARIANTS, penalized, penalty

REPO = os.path.dirname(os.path.abspath(__file__))
SCHEMA = 1


# -----------------------------------------------------------------------------
# config: every knob in one place, all of it written into the JSON

@dataclass
class Config:
    variant: str = "none"
    epochs: int = 20               # target: >= 99.40% at the final epoch within 20
    seeds: list = field(default_factory=lambda: [0])
    l1: float = 0.0                # from the variant table unless --l1 overrides it
    l2: float = 0.0
    norm: str = "bn"               # "gbn" = Ghost BatchNorm
    virtual_batch: int = 8         # Ghost BN: 4 virtual batches of 8 per batch of 32
    batch_size: int = 32           # the seed's, for train and test
    lr: float = 0.1                # OneCycle peak; SGD + Nesterov momentum
    momentum: float = 0.9
    warmup: float = 0.2            # fraction of steps spent rising to the peak lr
    dropout: float = 0.05          # a tiny net underfits more than it overfits: keep dropout light
    rotate_deg: float = 7.0        # random rotation in [-7, 7] degrees, the seed's augmentation
    normalize: dict = field(default_factory=lambda: {"mean": 0.1307, "std": 0.3081})  # applied to pixel/255
    channels_last: bool = True     # ~10-30% faster convolutions on CPU, same numbers run to run
    val: bool = False              # train on the first 50k, evaluate on the last 10k training images
    train_limit: int = 0           # 0 = all
    test_limit: int = 0
    data: str = "data"
    out: str = "results"
    name: str = ""                 # file name stem; defaults to the variant
    device: str = "auto"


def resolve(cfg):
    """Fill what the variant table and the machine decide: lambdas, norm, name, device."""
    v = VARIANTS[cfg.variant]
    cfg.l1 = v.l1 if cfg.l1 is None else cfg.l1
    cfg.l2 = v.l2 if cfg.l2 is None else cfg.l2
    cfg.norm = v.norm
    cfg.name = cfg.name or cfg.variant
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    return cfg


def seed_everything(seed):
    """Seed every RNG and turn on the deterministic algorithms: same command, same numbers."""
    import random
    import numpy as np
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


# -----------------------------------------------------------------------------
# data: the whole set lives on the device as uint8; batches are sliced, augmented as whole tensors

def in_repo(path, default):
    """The default folders live in the repository, wherever it is run from; other paths are as given."""
    return os.path.join(REPO, path) if path == default else path


def load_split(cfg, device):
    root = in_repo(cfg.data, Config.data)
    if not os.path.isdir(root) and cfg.data != Config.data:  # a typo must not start a download into a new folder
        raise ValueError(f"--data {cfg.data} is not a directory; run `python data.py --data {cfg.data}` to fetch MNIST there")
    train_x, train_y, test_x, test_y = data.load_mnist(root, log=lambda s: tqdm.write(s))
    if cfg.val:  # validation: the last 10k training images, never the test set
        train_x, train_y, test_x, test_y = train_x[:50000], train_y[:50000], train_x[50000:], train_y[50000:]
    for flag, limit, n in [("--train-limit", cfg.train_limit, len(train_x)), ("--test-limit", cfg.test_limit, len(test_x))]:
        if limit > n:
            raise ValueError(f"{flag} {limit} is larger than the {n:,} images available")
    if cfg.train_limit:
        train_x, train_y = train_x[:cfg.train_limit], train_y[:cfg.train_limit]
    if cfg.test_limit:
        test_x, test_y = test_x[:cfg.test_limit], test_y[:cfg.test_limit]
    return [t.to(device) for t in (train_x, train_y, test_x, test_y)]


def rotate(x, max_deg, gen):
    """Rotate each image of x (N, 1, 28, 28) in [0, 1] by its own angle in [-max_deg, max_deg]."""
    angle = (torch.rand(len(x), generator=gen, device=x.device) * 2 - 1) * math.radians(max_deg)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)  # zero padding = the black background


def prepare(x_uint8, cfg, gen=None):
    """uint8 (N, 28, 28) -> normalised float (N, 1, 28, 28); augmented when a generator is given (training)."""
    if gen is not None and cfg.rotate_deg:
        x = rotate(x_uint8.unsqueeze(1).float().div_(255), cfg.rotate_deg, gen)
        x = (x - cfg.normalize["mean"]) / cfg.normalize["std"]
    else:
        x = data.to_float(x_uint8, cfg.normalize)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


# -----------------------------------------------------------------------------
# one epoch of training, one evaluation

def train_one_epoch(net, opt, sched, params, train_x, train_y, gen, cfg, desc):
    net.train()
    n = len(train_x)
    order = torch.randperm(n, generator=gen, device=train_x.device)
    # sums stay on the device; .item() forces a sync, so it is called once per epoch, not per step
    loss_sum, pen_sum, correct = [torch.zeros((), device=train_x.device) for _ in range(3)]
    steps = range(0, n, cfg.batch_size)
    for start in tqdm(steps, desc=desc, leave=False, disable=None):
        idx = order[start:start + cfg.batch_size]
        x, y = prepare(train_x[idx], cfg, gen), train_y[idx].long()
        logits = net(x)
        data_loss = F.cross_entropy(logits, y)
        pen = penalty(params, cfg.l1, cfg.l2)
        opt.zero_grad(set_to_none=True)
        (data_loss + pen).backward()
        opt.step()
        sched.step()
        # sum the losses weighted by batch size, then divide by N: the last batch may be short
        loss_sum += data_loss.detach() * len(idx)
        pen_sum += pen.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / n, pen_sum.item() / n, 100.0 * correct.item() / n


@torch.no_grad()
def evaluate(net, test_x, test_y, cfg):
    """Mean test loss, accuracy in percent, and predictions (N,) for the misclassified list."""
    net.eval()
    loss_sum, preds = 0.0, []
    for start in range(0, len(test_x), cfg.batch_size):
        logits = net(prepare(test_x[start:start + cfg.batch_size], cfg))
        y = test_y[start:start + cfg.batch_size].long()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        preds.append(logits.argmax(1))
    preds = torch.cat(preds)
    correct = (preds == test_y.long()).sum().item()
    return float(loss_sum) / len(test_x), 100.0 * correct / len(test_x), correct, preds


# -----------------------------------------------------------------------------
# files: everything is written to a temporary file in the same folder, then renamed

def atomic_write(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def finite_or_none(x):
    """JSON has no NaN: a diverged loss is recorded as null."""
    return x if math.isfinite(x) else None


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
            f.write("\n")
    atomic_write(path, write)


def save_torch(path, obj):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def git_info():
    def git(*args):
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    # results/ and data/ change during a study; only code counts as dirty
    dirty = git("status", "--porcelain", "--", ".", ":!results", ":!data")
    return git("rev-parse", "HEAD"), (bool(dirty) if dirty is not None else None)


def comparable(cfg_dict):
    """The part of the config a resumed run must share with the one that saved the state."""
    return {k: v for k, v in cfg_dict.items() if k not in ("seeds", "device")}


# -----------------------------------------------------------------------------
# one seed: init, epochs with a state file after each, final metrics and checkpoint

def train_seed(seed, cfg, split, state_path, resume):
    train_x, train_y, test_x, test_y = split
    seed_everything(seed)
    net = model_lib.Net(cfg.dropout, cfg.norm, cfg.virtual_batch).to(cfg.device)  # weights from the seed alone
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    gen = torch.Generator(device=cfg.device).manual_seed(seed + 1_000_003)  # data order + augmentation
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                                                pct_start=cfg.warmup)
    history, run = [], {"seed": seed, "status": "ok"}
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location=cfg.device, weights_only=True)
        if state["config"] != comparable(asdict(cfg)):
            raise ValueError(f"{state_path} was saved by a different config; delete it or drop --resume")
        net.load_state_dict(state["model"]); opt.load_state_dict(state["opt"]); sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng_cpu"]); gen.set_state(state["rng_data"])
        if cfg.device == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"])
        history = state["history"]
        tqdm.write(f"{cfg.name} seed {seed}: resumed after epoch {len(history)}")
    params = penalized(net)
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss, pen, train_acc = train_one_epoch(net, opt, sched, params, train_x, train_y, gen, cfg,
                                                     f"{cfg.name} s{seed} e{epoch}")
        test_loss, test_acc, _, _ = evaluate(net, test_x, test_y, cfg)
        if cfg.device == "cuda":
            torch.cuda.synchronize()
        history.append({"epoch": epoch, "train_loss": finite_or_none(train_loss), "penalty": finite_or_none(pen),
                        "train_acc": train_acc, "test_loss": finite_or_none(test_loss), "test_acc": test_acc,
                        "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 3)})
        tqdm.write(f"{cfg.name} seed {seed} epoch {epoch:2d}/{cfg.epochs}: train loss {train_loss:.4f} "
                   f"(+penalty {pen:.4f}) acc {train_acc:.2f} | test loss {test_loss:.4f} acc {test_acc:.2f} "
                   f"| {history[-1]['seconds']:.1f}s")
        if not math.isfinite(train_loss + pen):
            run.update(status="diverged", diverged_epoch=epoch)
            tqdm.write(f"{cfg.name} seed {seed}: loss is not finite at epoch {epoch}: diverged, stopping this seed")
            break
        save_torch(state_path, {"config": comparable(asdict(cfg)), "model": net.state_dict(), "opt": opt.state_dict(),
                                "sched": sched.state_dict(), "rng_cpu": torch.get_rng_state(),
                                "rng_data": gen.get_state(), "history": history,
                                "rng_cuda": torch.cuda.get_rng_state() if cfg.device == "cuda" else torch.zeros(0)})
    _, final_acc, correct, preds = evaluate(net, test_x, test_y, cfg)
    ckpt = os.path.join(os.path.dirname(os.path.dirname(state_path)), f"{cfg.name}-seed{seed}.pt")
    state_dict = {k: v.contiguous().cpu() for k, v in net.state_dict().items()}  # loadable by a plain Net()
    save_torch(ckpt, state_dict)
    accs = [h["test_acc"] for h in history]
    best = max(range(len(accs)), key=lambda i: accs[i])
    wrong = (preds != test_y.long()).nonzero().flatten().tolist()
    run.update(epochs=history, final_test_acc=final_acc, test_correct=correct, best_test_acc=accs[best],
               best_epoch=best + 1, first_epoch_at_99_4=next((h["epoch"] for h in history if h["test_acc"] >= 99.4), None),
               misclassified=[{"index": i, "label": int(test_y[i]), "pred": int(preds[i])} for i in wrong],
               checkpoint=os.path.relpath(os.path.abspath(ckpt), REPO))
    if os.path.exists(state_path):  # a finished run needs no state
        os.remove(state_path)
    return run


def summarize(runs):
    ok = [r["final_test_acc"] for r in runs if r["status"] == "ok"]
    t = torch.tensor(ok, dtype=torch.float64)
    return {"final_test_acc_mean": t.mean().item() if ok else None,
            "final_test_acc_std": t.std().item() if len(ok) > 1 else 0.0 if ok else None,  # sample std (n-1)
            "final_test_acc_min": min(ok, default=None), "final_test_acc_max": max(ok, default=None),
            "seeds": [r["seed"] for r in runs], "diverged": [r["seed"] for r in runs if r["status"] != "ok"]}


# -----------------------------------------------------------------------------
# command line: every bad value is a one-line error and exit 2

def positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be > 0")
    return v


def finite_nonneg(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number")
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be a finite number >= 0")
    return v


def finite_pos(s):
    v = finite_nonneg(s)
    if v == 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be > 0")
    return v


def seed_list(s):
    try:
        seeds = [int(x) for x in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{s!r}: seeds must be distinct and >= 0")
    return seeds


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s --variant {" + ",".join(VARIANTS) + "} [options]  (-h for all)")
    d = Config()
    p.add_argument("--variant", choices=list(VARIANTS), required=True, help="which penalty / norm (regularizers.py)")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"epochs per seed (default {d.epochs})")
    p.add_argument("--seeds", type=seed_list, default=d.seeds, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device, help="auto = cuda if present")
    p.add_argument("--l1", type=finite_nonneg, default=None, help="override the variant's lambda_1")
    p.add_argument("--l2", type=finite_nonneg, default=None, help="override the variant's lambda_2")
    p.add_argument("--lr", type=finite_pos, default=d.lr, help=f"OneCycle peak learning rate (default {d.lr})")
    p.add_argument("--dropout", type=finite_nonneg, default=d.dropout, help=f"dropout p (default {d.dropout})")
    p.add_argument("--virtual-batch", type=positive_int, default=d.virtual_batch, help="Ghost BN virtual batch")
    p.add_argument("--train-limit", type=positive_int, default=None, help="train on the first N images only")
    p.add_argument("--test-limit", type=positive_int, default=None, help="evaluate on the first N images only")
    p.add_argument("--val", action="store_true", help="train on the first 50k, evaluate on the last 10k train images")
    p.add_argument("--data", default=d.data, help="MNIST folder (torchvision layout: <data>/MNIST/raw)")
    p.add_argument("--out", default=d.out, help="where <name>.json, checkpoints and state/ go")
    p.add_argument("--name", default="", help="file name stem (default: the variant)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/state/ after an interruption")
    args = p.parse_args(argv)
    if args.dropout >= 1:
        p.error(f"argument --dropout: {args.dropout} must be < 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda was asked for but torch sees no CUDA device")
    if args.name and (os.sep in args.name or args.name.startswith(".")):
        p.error(f"argument --name: {args.name!r} must be a plain file name")
    cfg = Config(**{k: v for k, v in vars(args).items() if k != "resume"})
    cfg.train_limit, cfg.test_limit = args.train_limit or 0, args.test_limit or 0
    return resolve(cfg), args.resume, p


def check_writable(folder):
    """Fail before training, not after: the output folder must exist (or be creatable) and take files."""
    try:
        os.makedirs(os.path.join(folder, "state"), exist_ok=True)
        atomic_write(os.path.join(folder, ".write-test"), lambda tmp: open(tmp, "w").close())
        os.remove(os.path.join(folder, ".write-test"))
    except OSError as e:
        raise ValueError(f"cannot write to --out {folder}: {e.strerror}")


def main(argv=None):
    cfg, resume, parser = parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.perf_counter()
    try:
        out = in_repo(cfg.out, Config.out)
        check_writable(out)
        split = load_split(cfg, cfg.device)
    except (ValueError, data.DataError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    json_path = os.path.join(out, f"{cfg.name}.json")
    commit, dirty = git_info()
    done = {}
    if resume and os.path.exists(json_path):  # seeds a killed multi-seed run already finished
        with open(json_path) as f:
            old = json.load(f)
        if comparable(old["config"]) == comparable(asdict(cfg)):
            done = {r["seed"]: r for r in old["runs"] if r["seed"] in cfg.seeds}
    state_dir = os.path.join(out, "state")
    if resume and not done and not any(os.path.exists(os.path.join(state_dir, f"{cfg.name}-seed{s}.pt")) for s in cfg.seeds):
        parser.exit(2, f"{parser.prog}: error: --resume: no saved state for {cfg.name} seeds {cfg.seeds} in {state_dir}\n")
    n_train = len(split[0])
    tqdm.write(f"{cfg.name}: l1={cfg.l1:g} l2={cfg.l2:g} norm={cfg.norm}, {len(cfg.seeds)} seed(s) x {cfg.epochs} epochs "
               f"on {cfg.device}, {n_train:,} train images; on 2 CPU cores expect ~{0.5 * n_train / 60000:.1f} min "
               f"per epoch, ~{0.5 * n_train / 60000 * cfg.epochs * len(cfg.seeds):.0f} min in all")
    runs = []
    for seed in cfg.seeds:
        if seed in done:
            runs.append(done[seed])
            continue
        try:
            runs.append(train_seed(seed, cfg, split, os.path.join(state_dir, f"{cfg.name}-seed{seed}.pt"), resume))
        except ValueError as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        # rewritten after every seed, so a long multi-seed run leaves usable results when it is stopped
        write_json(json_path, {
            "schema": SCHEMA, "variant": cfg.variant, "config": asdict(cfg),
            "env": {"command": " ".join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)]),
                    "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__,
                    "python": platform.python_version(), "device": cfg.device,
                    "device_name": torch.cuda.get_device_name() if cfg.device == "cuda" else platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled(),
                    "data_sha256": data.data_sha256(), "started": started, "wall_s": round(time.perf_counter() - t0, 1)},
            "runs": runs, "summary": summarize(runs)})
    s = summarize(runs)
    if s["final_test_acc_mean"] is not None:
        print(f"{cfg.name}: final test acc {s['final_test_acc_mean']:.2f} ± {s['final_test_acc_std']:.2f} "
              f"(min {s['final_test_acc_min']:.2f}) over seeds {s['seeds']} -> {json_path}")
    if s["diverged"]:
        print(f"{cfg.name}: seeds {s['diverged']} diverged", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
