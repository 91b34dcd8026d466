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
DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    packed: bool = False           # several models in one grouped-conv graph
    dtype: str = "float32"         # float64 only to check packed == solo without float32 rounding noise
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
    angle = (torch.rand(len(x), generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * math.radians(max_deg)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)  # zero padding = the black background


def prepare(x_uint8, cfg, gen=None):
    """uint8 (N, 28, 28) -> normalised float (N, 1, 28, 28); augmented when a generator is given (training)."""
    if gen is not None and cfg.rotate_deg:
        x = rotate(x_uint8.unsqueeze(1).to(DTYPES[cfg.dtype]).div_(255), cfg.rotate_deg, gen)
        return (x - cfg.normalize["mean"]) / cfg.normalize["std"]
    return data.to_float(x_uint8, cfg.normalize, DTYPES[cfg.dtype])


def memory_format(cfg):
    """The layout the net's input takes, set once per batch after the K models' images are stacked."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


# -----------------------------------------------------------------------------
# one epoch of training, one evaluation, for a pack of K models (K = 1 when training one at a time)

def train_one_epoch(net, opt, sched, pack, train_x, train_y, cfg, desc):
    """One epoch of K packed models, each on its own data order and augmentation; returns (K,) metrics."""
    net.train()
    n, k, dev = len(train_x), net.k, train_x.device
    orders = [torch.randperm(n, generator=g, device=dev) for g in pack["data_gens"]]
    params = penalized(net)
    # sums stay on the device; .item() forces a sync, so it is called once per epoch, not per step
    loss_sum, pen_sum, correct = [torch.zeros(k, device=dev, dtype=torch.float64) for _ in range(3)]
    for start in tqdm(range(0, n, cfg.batch_size), desc=desc, leave=False, disable=None):
        idx = [o[start:start + cfg.batch_size] for o in orders]
        x = torch.cat([prepare(train_x[i], cfg, g) for i, g in zip(idx, pack["data_gens"])], 1)  # (B, K, 28, 28)
        y = torch.stack([train_y[i] for i in idx], 1).long()                                     # (B, K)
        logits = net(x.contiguous(memory_format=memory_format(cfg)))                                 # (B, K, 10)
        # one cross-entropy per model, each exactly as a model trained alone computes it
        data_loss = torch.stack([F.cross_entropy(logits[:, i], y[:, i]) for i in range(k)])      # (K,)
        pen = penalty(params, pack["l1"], pack["l2"], k=k)
        opt.zero_grad(set_to_none=True)
        (data_loss + pen).sum().backward()  # the models share no parameter: model k's gradient is its own loss's
        opt.step()
        sched.step()
        # sum the losses weighted by batch size, then divide by N: the last batch may be short
        loss_sum += data_loss.detach() * len(idx[0])
        pen_sum += pen.detach() * len(idx[0])
        correct += (logits.argmax(2) == y).sum(0)
    return (loss_sum / n).tolist(), (pen_sum / n).tolist(), (100.0 * correct / n).tolist()


@torch.no_grad()
def evaluate(net, test_x, test_y, cfg):
    """Per model: mean test loss, accuracy in percent, correct count; and predictions (K, N)."""
    net.eval()
    k = net.k
    loss_sum, preds = torch.zeros(k, device=test_x.device, dtype=torch.float64), []
    for start in range(0, len(test_x), cfg.batch_size):
        x = prepare(test_x[start:start + cfg.batch_size], cfg)                     # (B, 1, 28, 28)
        x = x.expand(-1, k, -1, -1)                                                 # every model sees the image
        logits = net(x.contiguous(memory_format=memory_format(cfg)))
        y = test_y[start:start + cfg.batch_size].long()
        loss_sum += torch.stack([F.cross_entropy(logits[:, i], y, reduction="sum") for i in range(k)])
        preds.append(logits.argmax(2))
    preds = torch.cat(preds).T                                                      # (K, N)
    correct = (preds == test_y.long()).sum(1).tolist()
    return (loss_sum / len(test_x)).tolist(), [100.0 * c / len(test_x) for c in correct], correct, preds


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
    """The part of the config a resumed run must share with the one that saved the state. A knob missing
    from an older file is taken at its default, which is what the code did before the knob existed."""
    full = asdict(Config()) | cfg_dict
    return {k: v for k, v in full.items() if k not in ("seeds", "device")}


# -----------------------------------------------------------------------------
# one pack: K (config, seed) members trained together; each keeps its own weights and random streams

def build_pack(members, device):
    """Initial weights, data generator and dropout generator of each member come from its seed alone."""
    cfg = members[0][0]
    state_dicts, data_gens, drop_gens = [], [], []
    for _, seed in members:
        seed_everything(seed)
        state_dicts.append(model_lib.Net(cfg.dropout, cfg.norm, cfg.virtual_batch).state_dict())  # init on CPU
        drop = torch.Generator(device=device)
        # dropout continues the seed's stream after the initialisation, exactly as nn.Dropout would on CPU
        drop.set_state(torch.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state())
        drop_gens.append(drop)
        data_gens.append(torch.Generator(device=device).manual_seed(seed + 1_000_003))  # order + augmentation
    net = model_lib.PackedNet(len(members), cfg.dropout, cfg.norm, cfg.virtual_batch)
    net.load_state_dict(model_lib.pack(state_dicts))
    net = net.to(device, DTYPES[cfg.dtype], memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    net.set_dropout_generators(drop_gens)
    l1 = torch.tensor([m.l1 for m, _ in members], device=device, dtype=DTYPES[cfg.dtype])
    l2 = torch.tensor([m.l2 for m, _ in members], device=device, dtype=DTYPES[cfg.dtype])
    return net, {"data_gens": data_gens, "drop_gens": drop_gens, "l1": l1, "l2": l2}


def train_pack(members, split, out, state_path, resume):
    """Train K members for cfg.epochs; save state after every epoch; return one JSON run entry per member."""
    cfg = members[0][0]
    train_x, train_y, test_x, test_y = split
    net, pack = build_pack(members, cfg.device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, epochs=cfg.epochs, pct_start=cfg.warmup,
                                                steps_per_epoch=math.ceil(len(train_x) / cfg.batch_size))
    k = len(members)
    label = ", ".join(f"{m.name} seed {s}" for m, s in members)
    histories, runs = [[] for _ in members], [{"seed": s, "status": "ok"} for _, s in members]
    signature = [comparable(asdict(m)) | {"seed": s} for m, s in members]
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location=cfg.device, weights_only=True)
        if state.get("members") != signature:
            raise ValueError(f"{state_path} was saved by a different config; delete it or drop --resume")
        net.load_state_dict(state["model"]); opt.load_state_dict(state["opt"]); sched.load_state_dict(state["sched"])
        for g, st in zip(pack["data_gens"] + pack["drop_gens"], state["rng"]):
            g.set_state(st)
        histories, runs = state["histories"], state["runs"]
        tqdm.write(f"{label}: resumed after epoch {len(histories[0])}")
    for epoch in range(len(histories[0]) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss, pen, train_acc = train_one_epoch(net, opt, sched, pack, train_x, train_y, cfg,
                                                     f"{label} e{epoch}" if k == 1 else f"{k} models e{epoch}")
        test_loss, test_acc, _, _ = evaluate(net, test_x, test_y, cfg)
        seconds = round(time.perf_counter() - t0, 3)
        for i, (m, seed) in enumerate(members):
            if runs[i]["status"] != "ok":
                continue
            histories[i].append({"epoch": epoch, "train_loss": finite_or_none(train_loss[i]),
                                 "penalty": finite_or_none(pen[i]), "train_acc": train_acc[i],
                                 "test_loss": finite_or_none(test_loss[i]), "test_acc": test_acc[i],
                                 "lr": sched.get_last_lr()[0], "seconds": seconds})
            tqdm.write(f"{m.name} seed {seed} epoch {epoch:2d}/{cfg.epochs}: train loss {train_loss[i]:.4f} "
                       f"(+penalty {pen[i]:.4f}) acc {train_acc[i]:.2f} | test loss {test_loss[i]:.4f} "
                       f"acc {test_acc[i]:.2f} | {seconds:.1f}s")
            if not math.isfinite(train_loss[i] + pen[i]):
                runs[i].update(status="diverged", diverged_epoch=epoch)
                tqdm.write(f"{m.name} seed {seed}: loss is not finite at epoch {epoch}: diverged")
        if all(r["status"] != "ok" for r in runs):
            break
        save_torch(state_path, {"members": signature, "model": net.state_dict(), "opt": opt.state_dict(),
                                "sched": sched.state_dict(), "histories": histories, "runs": runs,
                                "rng": [g.get_state() for g in pack["data_gens"] + pack["drop_gens"]]})
    _, final_acc, correct, preds = evaluate(net, test_x, test_y, cfg)
    weights = model_lib.unpack({key: v.cpu() for key, v in net.state_dict().items()}, k)  # plain Net state_dicts
    for i, (m, seed) in enumerate(members):
        ckpt = os.path.join(out, f"{m.name}-seed{seed}.pt")
        save_torch(ckpt, weights[i])
        accs = [h["test_acc"] for h in histories[i]]
        best = max(range(len(accs)), key=lambda j: accs[j])
        wrong = (preds[i] != test_y.long()).nonzero().flatten().tolist()
        runs[i].update(epochs=histories[i], final_test_acc=final_acc[i], test_correct=correct[i],
                       best_test_acc=accs[best], best_epoch=best + 1,
                       first_epoch_at_99_4=next((h["epoch"] for h in histories[i] if h["test_acc"] >= 99.4), None),
                       misclassified=[{"index": j, "label": int(test_y[j]), "pred": int(preds[i][j])} for j in wrong],
                       checkpoint=os.path.relpath(os.path.abspath(ckpt), REPO))
    return runs


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


def variant_list(s):
    names = s.split(",")
    for name in names:
        if name not in VARIANTS:
            raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(VARIANTS)})")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{s!r} names a variant twice")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s --variant {" + ",".join(VARIANTS) + "} [options]  (-h for all)")
    d = Config()
    p.add_argument("--variant", type=variant_list, required=True,
                   help="which penalty / norm (regularizers.py); several, comma-separated, train one after another "
                        "or, with --packed, together")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"epochs per seed (default {d.epochs})")
    p.add_argument("--seeds", type=seed_list, default=d.seeds, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device, help="auto = cuda if present")
    p.add_argument("--packed", action="store_true", help="train every (variant, seed) in one grouped-conv graph")
    p.add_argument("--dtype", choices=list(DTYPES), default=d.dtype, help="float64 is for exactness checks")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=d.channels_last,
                   help="channels-last memory format (default on: faster convolutions on CPU)")
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
    if args.name and (os.sep in args.name or args.name.startswith(".") or len(args.variant) > 1):
        p.error(f"argument --name: {args.name!r} must be a plain file name, for one variant")
    if args.packed and len({VARIANTS[v].norm for v in args.variant}) > 1:
        p.error("argument --packed: a pack needs one kind of norm; train bn and gbn variants in separate packs")
    fields = {k: v for k, v in vars(args).items() if k not in ("resume", "variant")}
    fields.update(train_limit=args.train_limit or 0, test_limit=args.test_limit or 0)
    return [resolve(Config(variant=v, **fields)) for v in args.variant], args.resume, p


def check_writable(folder):
    """Fail before training, not after: the output folder must exist (or be creatable) and take files."""
    try:
        os.makedirs(os.path.join(folder, "state"), exist_ok=True)
        atomic_write(os.path.join(folder, ".write-test"), lambda tmp: open(tmp, "w").close())
        os.remove(os.path.join(folder, ".write-test"))
    except OSError as e:
        raise ValueError(f"cannot write to --out {folder}: {e.strerror}")


def result_json(cfg, runs, env):
    return {"schema": SCHEMA, "variant": cfg.variant, "config": asdict(cfg), "env": env,
            "runs": sorted(runs, key=lambda r: cfg.seeds.index(r["seed"])), "summary": summarize(runs)}


def main(argv=None):
    cfgs, resume, parser = parse_args(argv)
    cfg = cfgs[0]  # what all members share: everything but variant, lambdas and name
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.perf_counter()
    try:
        out = in_repo(cfg.out, Config.out)
        check_writable(out)
        split = load_split(cfg, cfg.device)
    except (ValueError, data.DataError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    commit, dirty = git_info()
    env = {"command": " ".join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)]),
           "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__, "python": platform.python_version(),
           "device": cfg.device, "device_name": torch.cuda.get_device_name() if cfg.device == "cuda"
           else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "deterministic": torch.are_deterministic_algorithms_enabled(), "data_sha256": data.data_sha256(),
           "started": started}
    runs, earlier = {c.name: [] for c in cfgs}, {}
    for c in cfgs:  # --resume keeps the seeds a killed multi-seed run already finished
        path = os.path.join(out, f"{c.name}.json")
        if resume and os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            if comparable(old["config"]) == comparable(asdict(c)):
                runs[c.name] = [r for r in old["runs"] if r["seed"] in c.seeds]
                earlier[c.name] = old["env"]  # the provenance of the seeds kept
    todo = [(c, s) for c in cfgs for s in c.seeds if s not in {r["seed"] for r in runs[c.name]}]
    packs = [todo] if cfg.packed and todo else [[m] for m in todo]
    state_of = lambda pack: os.path.join(out, "state", "+".join(dict.fromkeys(c.name for c, _ in pack)) + "-seed"
                                         + "-".join(str(s) for s in dict.fromkeys(s for _, s in pack)) + ".pt")
    if resume and todo and not any(os.path.exists(state_of(p)) for p in packs) and not any(runs.values()):
        parser.exit(2, f"{parser.prog}: error: --resume: no saved state for {', '.join(runs)} seeds {cfg.seeds} "
                       f"in {os.path.join(out, 'state')}\n")
    minutes = 0.5 * len(split[0]) / 60000 * cfg.epochs * len(todo)
    tqdm.write(f"training {len(todo)} model(s) ({', '.join(f'{c.name}: l1={c.l1:g} l2={c.l2:g} norm={c.norm}' for c in cfgs)})"
               f" x {cfg.epochs} epochs on {cfg.device}{', packed' if cfg.packed else ''}, {len(split[0]):,} train images;"
               f" expect ~{minutes:.{0 if minutes >= 10 else 1}f} min on 2 CPU cores (about 0.5 min per model-epoch), far less on a GPU")
    for pack in packs:
        try:
            new = train_pack(pack, split, out, state_of(pack), resume)
        except ValueError as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        except KeyboardInterrupt:
            parser.exit(130, f"\n{parser.prog}: interrupted; finished epochs are saved, continue with the same "
                             f"command and --resume\n")
        for (c, _), run in zip(pack, new):
            runs[c.name].append(run)
        # rewritten after every pack, so a long multi-seed run leaves usable results when it is stopped
        for c in {c.name: c for c, _ in pack}.values():
            write_json(os.path.join(out, f"{c.name}.json"),
                       result_json(c, runs[c.name], env | {"wall_s": round(time.perf_counter() - t0, 1)}
                                   | ({"earlier": earlier[c.name]} if c.name in earlier else {})))
        if os.path.exists(state_of(pack)):  # only now, with its results written, does the run need no state
            os.remove(state_of(pack))
    failed = False
    for c in cfgs:
        s = summarize(runs[c.name])
        if s["final_test_acc_mean"] is not None:
            print(f"{c.name}: final test acc {s['final_test_acc_mean']:.2f} ± {s['final_test_acc_std']:.2f} "
                  f"(min {s['final_test_acc_min']:.2f}) over seeds {s['seeds']} -> {os.path.join(out, c.name + '.json')}")
        if s["diverged"]:
            print(f"{c.name}: seeds {s['diverged']} diverged", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before training started: nothing to save
        sys.exit(130)
