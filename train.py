"""Train one variant of the 8,286-parameter MNIST CNN over one or more seeds; results go through results.py.

    python train.py --variant l1 --epochs 15 --seeds 0,1,2
    python train.py --variant l2 --l2 3e-4 --val --name l2-3e-4 --out results/sweep   # a validation run
    python train.py --variant l1 --resume          # continue a killed run exactly where it stopped
"""
import os
import signal
import sys

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    # Ctrl-C while torch is still importing: one line, not a traceback (main() installs the normal handler)
    signal.signal(signal.SIGINT, lambda *_: (sys.stderr.write("\ntrain.py: interrupted while starting; nothing "
                                                              "was written\n"), os._exit(130)))

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import model as model_lib  # noqa: E402
import results  # noqa: E402
from regularizers import VARIANTS, penalized, penalty  # noqa: E402

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
    batch_size: int = 32           # the seed's, for training
    lr: float = 0.1                # OneCycle peak; SGD + Nesterov momentum
    cycle_momentum: bool = True    # OneCycleLR's default: momentum runs momentum_range[1] -> [0] -> [1] against the lr
    momentum_range: list = field(default_factory=lambda: [0.85, 0.95])
    momentum: float = 0.9          # used only with cycle_momentum off
    warmup: float = 0.2            # fraction of steps spent rising to the peak lr
    dropout: float = 0.05          # a tiny net underfits more than it overfits: keep dropout light
    dropout_masks: str = "bytes"   # "bytes": masks from one bulk random draw (p rounded to 1/256); "bernoulli": nn.Dropout's
    rotate_deg: float = 7.0        # random rotation in [-7, 7] degrees, the seed's augmentation
    normalize: dict = field(default_factory=lambda: {"mean": 0.1307, "std": 0.3081})  # applied to pixel/255
    channels_last: bool = True     # faster convolutions on CPU, same numbers run to run
    precision: str = "bf16"        # autocast of the training step ("fp32": none); evaluation is always fp32
    compile: bool = True           # torch.compile the training step; eager where no C++ compiler works (noted)
    eval_batch_size: int = 500     # BatchNorm in eval mode does not depend on the batch; 32 was the original
    val: bool = False              # train on the first 50k, evaluate on the last 10k training images
    train_limit: int = 0           # 0 = all
    test_limit: int = 0
    data: str = "data"             # relative defaults mean the repository's folders, wherever train.py runs from
    out: str = "results"
    name: str = ""                 # file name stem; defaults to the variant
    packed: bool = False           # several models in one grouped-conv graph ("a pack")
    dtype: str = "float32"         # float64 only to check packed == solo without float32 rounding noise
    device: str = "auto"


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


def in_repo(path, default):
    """The default folders are the repository's, wherever train.py is run from; other paths are as given."""
    return os.path.join(results.REPO, path) if path == default else path


def load_split(cfg, digests):
    """(train_x, train_y, eval_x, eval_y) uint8 on the device: the test set, or with --val the last 10k training
    images (the test set is then never read into the split)."""
    root = in_repo(cfg.data, Config.data)
    if not os.path.isdir(root) and cfg.data != Config.data:  # a typo must not start a download into a new folder
        raise ValueError(f"--data {cfg.data} is not a directory; run `python data.py --data {cfg.data}` to fetch MNIST there")
    train_x, train_y, test_x, test_y = data.load_mnist(root, log=tqdm.write, digests=digests)
    if cfg.val:
        train_x, train_y, test_x, test_y = train_x[:50000], train_y[:50000], train_x[50000:], train_y[50000:]
    for flag, limit, n in [("--train-limit", cfg.train_limit, len(train_x)), ("--test-limit", cfg.test_limit, len(test_x))]:
        if limit > n:
            raise ValueError(f"{flag} {limit} is larger than the {n:,} images available")
    train_x, train_y = train_x[:cfg.train_limit or None], train_y[:cfg.train_limit or None]
    test_x, test_y = test_x[:cfg.test_limit or None], test_y[:cfg.test_limit or None]
    return [t.to(cfg.device) for t in (train_x, train_y, test_x, test_y)]


# -----------------------------------------------------------------------------
# one training step, one epoch and one evaluation, for a pack of K models (K = 1 when training one at a time)

def step_loss(net, x, y, noise, l1, l2, bf16):
    """Forward and loss of K models: per-model cross-entropy (K,) and penalty (K,), summed for backward."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = net(x, noise)                                                                  # (B, K, 10)
    logits = logits.float() if bf16 else logits
    # one cross-entropy per model, each exactly as a model trained alone computes it
    data_loss = torch.stack([F.cross_entropy(logits[:, i], y[:, i]) for i in range(net.k)])    # (K,)
    pen = penalty(penalized(net), l1, l2, k=net.k)
    return (data_loss + pen).sum(), data_loss.detach(), pen.detach(), logits.detach()


def compiled_or_eager(fn, cfg, env):
    """torch.compile(fn) where it works: a tiny probe first, so a machine without a C++ compiler trains eagerly,
    says so in one line and records it (cfg.compile = False, env.compile_fallback = the reason)."""
    if not cfg.compile:
        return fn
    if cfg.dropout_masks == "bernoulli" and cfg.dropout:  # bernoulli_ on a torch.Generator breaks the graph
        tqdm.write("--dropout-masks bernoulli draws inside the step, which torch.compile cannot trace; training eagerly")
        cfg.compile, env["compile_fallback"] = False, "bernoulli dropout masks"
        return fn
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(3, device=cfg.device))
    except Exception as e:  # InductorError, CppCompileError, ...: whatever the reason, eager still works
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        tqdm.write(f"torch.compile does not work here ({reason}); training eagerly (--no-compile to skip this probe)")
        cfg.compile, env["compile_fallback"] = False, reason
        return fn
    return torch.compile(fn, dynamic=False)


def train_one_epoch(net, opt, sched, pack, train_x, train_y, cfg, desc):
    """One epoch of K packed models, each on its own data order and augmentation; returns (K,) metrics."""
    net.train()
    n, k, dev = len(train_x), net.k, train_x.device
    orders = [torch.randperm(n, generator=g, device=dev) for g in pack["data_gens"]]
    # sums stay on the device; .item() forces a sync, so it is called once per epoch, not per step
    loss_sum, pen_sum, correct = [torch.zeros(k, device=dev, dtype=torch.float64) for _ in range(3)]
    for start in tqdm(range(0, n, cfg.batch_size), desc=desc, leave=False, disable=None):
        idx = [o[start:start + cfg.batch_size] for o in orders]
        x = torch.cat([data.augment(train_x[i], cfg.normalize, cfg.rotate_deg, g, DTYPES[cfg.dtype])
                       for i, g in zip(idx, pack["data_gens"])], 1)                             # (B, K, 28, 28)
        y = torch.stack([train_y[i] for i in idx], 1).long()                                    # (B, K)
        noise = net.draw_noise(len(x)) if cfg.dropout_masks == "bytes" and cfg.dropout else None
        total, data_loss, pen, logits = pack["step"](net, x.contiguous(memory_format=memory_format(cfg)), y, noise,
                                                     pack["l1"], pack["l2"], cfg.precision == "bf16")
        opt.zero_grad(set_to_none=True)
        total.backward()  # the models share no parameter: model k's gradient is its own loss's
        opt.step()
        sched.step()
        # sum the losses weighted by batch size, then divide by N: the last batch may be short
        loss_sum += data_loss * len(x)
        pen_sum += pen * len(x)
        correct += (logits.argmax(2) == y).sum(0)
    return (loss_sum / n).tolist(), (pen_sum / n).tolist(), (100.0 * correct / n).tolist()


@torch.no_grad()
def evaluate(net, test_x, test_y, cfg):
    """Per model: mean loss, accuracy in percent, correct count; and predictions (K, N). Always fp32 eager."""
    net.eval()
    k = net.k
    loss_sum, preds = torch.zeros(k, device=test_x.device, dtype=torch.float64), []
    for start in range(0, len(test_x), cfg.eval_batch_size):
        x = data.to_float(test_x[start:start + cfg.eval_batch_size], cfg.normalize, DTYPES[cfg.dtype])
        logits = net(x.expand(-1, k, -1, -1).contiguous(memory_format=memory_format(cfg)))  # every model sees it
        y = test_y[start:start + cfg.eval_batch_size].long()
        loss_sum += torch.stack([F.cross_entropy(logits[:, i], y, reduction="sum") for i in range(k)])
        preds.append(logits.argmax(2))
    preds = torch.cat(preds).T                                                      # (K, N)
    correct = (preds == test_y.long()).sum(1).tolist()
    return (loss_sum / len(test_x)).tolist(), [100.0 * c / len(test_x) for c in correct], correct, preds


def memory_format(cfg):
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


# -----------------------------------------------------------------------------
# one pack: K (config, seed) members trained together; each keeps its own weights and random streams

def build_pack(members, device, env=None):
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
    # a lambda tensor only where some member has that penalty: a zero one would still add its (zero) terms
    lam = lambda key: (torch.tensor([getattr(m, key) for m, _ in members], device=device, dtype=DTYPES[cfg.dtype])
                       if any(getattr(m, key) for m, _ in members) else None)
    return net, {"data_gens": data_gens, "drop_gens": drop_gens, "l1": lam("l1"), "l2": lam("l2"),
                 "step": compiled_or_eager(step_loss, cfg, env if env is not None else {})}


def weight_norms(net):
    """Per model, {conv1: ||w||_2, ..., conv9: ...} of the convolution weights (float64, on the CPU)."""
    per_layer = {name.split(".")[0]: p.detach().double().reshape(net.k, -1).norm(dim=1).tolist()
                 for name, p in net.named_parameters() if p.dim() == 4}
    return [{name: norms[i] for name, norms in per_layer.items()} for i in range(net.k)]


def near_zero_fraction(state_dict, rel=0.01):
    """Fraction of all convolution weights with |w| < rel x the largest |w| of their own layer."""
    convs = [w for w in state_dict.values() if w.dim() == 4]
    small = sum((w.abs() < rel * w.abs().max()).sum().item() for w in convs)
    return small / sum(w.numel() for w in convs)


def train_pack(members, split, state_path, resume, env):
    """Train K members for cfg.epochs; save state after every epoch; return (run entries, weights per member)."""
    cfg = members[0][0]
    train_x, train_y, test_x, test_y = split
    net, pack = build_pack(members, cfg.device, env)
    lo, hi = cfg.momentum_range
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=hi if cfg.cycle_momentum else cfg.momentum, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, epochs=cfg.epochs, pct_start=cfg.warmup,
                                                steps_per_epoch=math.ceil(len(train_x) / cfg.batch_size),
                                                cycle_momentum=cfg.cycle_momentum, base_momentum=lo, max_momentum=hi)
    k = len(members)
    label = ", ".join(f"{m.name} seed {s}" for m, s in members)
    histories, runs = [[] for _ in members], [{"seed": s, "status": "ok", "pack_size": k} for _, s in members]
    signature = [results.comparable(asdict(m)) | {"seed": s, "device": cfg.device} for m, s in members]
    if resume and os.path.exists(state_path):
        try:  # RNG states must stay CPU byte tensors: load everything to the CPU, load_state_dict moves the rest
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, or not a state file at all
            raise ValueError(f"{state_path} is damaged ({type(e).__name__}); delete it to train that seed from the start")
        if state.get("members") != signature:
            raise ValueError(f"{state_path} was saved by a different config or device; delete it or drop --resume")
        net.load_state_dict(state["model"]); opt.load_state_dict(state["opt"]); sched.load_state_dict(state["sched"])
        for g, st in zip(pack["data_gens"] + pack["drop_gens"], state["rng"]):
            g.set_state(st)
        histories, runs = state["histories"], state["runs"]
        tqdm.write(f"{label}: resumed after epoch {len(histories[0])}")
    for epoch in range(len(histories[0]) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        momentum = opt.param_groups[0]["momentum"]
        train_loss, pen, train_acc = train_one_epoch(net, opt, sched, pack, train_x, train_y, cfg,
                                                     f"{label} e{epoch}" if k == 1 else f"{k} models e{epoch}")
        test_loss, test_acc, _, _ = evaluate(net, test_x, test_y, cfg)
        seconds = round((time.perf_counter() - t0) / k, 3)  # a pack's wall time, shared by its K models
        for i, ((m, seed), norms) in enumerate(zip(members, weight_norms(net))):
            if runs[i]["status"] != "ok":
                continue
            finite = lambda v: v if math.isfinite(v) else None  # JSON has no NaN: a diverged loss is null
            histories[i].append({"epoch": epoch, "train_loss": finite(train_loss[i]), "penalty": finite(pen[i]),
                                 "train_acc": train_acc[i], "test_loss": finite(test_loss[i]), "test_acc": test_acc[i],
                                 "lr": sched.get_last_lr()[0], "momentum": momentum, "seconds": seconds,
                                 "weight_norm": {n: finite(v) for n, v in norms.items()}})
            tqdm.write(f"{m.name} seed {seed} epoch {epoch:2d}/{cfg.epochs}: train loss {train_loss[i]:.4f} "
                       f"(+penalty {pen[i]:.4f}) acc {train_acc[i]:.2f} | {'val' if cfg.val else 'test'} loss "
                       f"{test_loss[i]:.4f} acc {test_acc[i]:.2f} | {seconds:.1f}s{' per model' if k > 1 else ''}")
            if not math.isfinite(train_loss[i] + pen[i]):
                runs[i].update(status="diverged", diverged_epoch=epoch)
                tqdm.write(f"{m.name} seed {seed}: loss is not finite at epoch {epoch}: diverged")
        if all(r["status"] != "ok" for r in runs):
            break
        results.save_torch(state_path, {"members": signature, "model": net.state_dict(), "opt": opt.state_dict(),
                                        "sched": sched.state_dict(), "histories": histories, "runs": runs,
                                        "rng": [g.get_state() for g in pack["data_gens"] + pack["drop_gens"]]})
    _, final_acc, correct, preds = evaluate(net, test_x, test_y, cfg)
    weights = model_lib.unpack({key: v.cpu() for key, v in net.state_dict().items()}, k)  # plain Net state_dicts
    for i, (m, seed) in enumerate(members):
        accs = [h["test_acc"] for h in histories[i]]
        best = max(range(len(accs)), key=lambda j: accs[j])
        wrong = (preds[i] != test_y.long()).nonzero().flatten().tolist()
        runs[i].update(epochs=histories[i], final_test_acc=final_acc[i], test_correct=correct[i],
                       best_test_acc=accs[best], best_epoch=best + 1, near_zero_fraction=near_zero_fraction(weights[i]),
                       first_epoch_at_99_4=next((h["epoch"] for h in histories[i] if h["test_acc"] >= 99.4), None),
                       misclassified=[{"index": j, "label": int(test_y[j]), "pred": int(preds[i][j])} for j in wrong],
                       env=env | {"wall_s": round(sum(h["seconds"] for h in histories[i]), 1)})
    return runs, weights


# -----------------------------------------------------------------------------
# command line: every bad value is a one-line error and exit 2

def typed(convert, check, message):
    """An argparse type: convert, then check, else '<value>: <message>'."""
    def parse(s):
        try:
            v = convert(s)
        except ValueError:
            v = None
        if v is None or not check(v):
            raise argparse.ArgumentTypeError(f"{s!r} {message}")
        return v
    return parse


positive_int = typed(int, lambda v: v > 0, "must be an integer > 0")
finite_nonneg = typed(float, lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0")
finite_pos = typed(float, lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0")
seed_list = typed(lambda s: [int(x) for x in s.split(",")],
                  lambda v: len(set(v)) == len(v) and all(0 <= x < 2**32 for x in v),
                  "must be distinct comma-separated integers in [0, 2^32), e.g. 0,1,2")


def variant_list(s):
    names = s.split(",")
    bad = [n for n in names if n not in VARIANTS]
    if bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"invalid choice: {bad[0]!r} (choose from {', '.join(VARIANTS)})" if bad
                                         else f"{s!r} names a variant twice")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s --variant {" + ",".join(VARIANTS) + "} [options]  (-h for all)")
    d, flag = Config(), lambda name: "--" + name.replace("_", "-")
    p.add_argument("--variant", type=variant_list, required=True,
                   help="which penalty / norm (regularizers.py); several, comma-separated, train one after another "
                        "or, with --packed, together")
    p.add_argument("--seeds", type=seed_list, default=d.seeds, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device, help="auto = cuda if present")
    for name, kind, help_ in [("epochs", positive_int, "epochs per seed"), ("lr", finite_pos, "OneCycle peak lr"),
                              ("dropout", finite_nonneg, "dropout p"), ("warmup", finite_pos, "fraction of steps to the peak lr"),
                              ("rotate_deg", finite_nonneg, "rotation range in degrees"),
                              ("momentum", finite_nonneg, "SGD momentum when --no-cycle-momentum"),
                              ("virtual_batch", positive_int, "Ghost BN virtual batch"),
                              ("eval_batch_size", positive_int, "evaluation batch (does not change results)"),
                              ("train_limit", positive_int, "train on the first N images only"),
                              ("test_limit", positive_int, "evaluate on the first N images only")]:
        default = None if name.endswith("limit") else getattr(d, name)
        p.add_argument(flag(name), type=kind, default=default, help=f"{help_} (default {default or 'all'})")
    for name, help_ in [("packed", "train every (variant, seed) in one grouped-conv graph"),
                        ("compile", "torch.compile the training step"), ("cycle_momentum", "OneCycleLR cycles momentum"),
                        ("channels_last", "channels-last memory format")]:
        p.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=getattr(d, name), help=help_)
    p.add_argument("--precision", choices=["bf16", "fp32"], default=d.precision, help="autocast of the training step")
    p.add_argument("--dropout-masks", choices=["bytes", "bernoulli"], default=d.dropout_masks, help="how masks are drawn")
    p.add_argument("--dtype", choices=list(DTYPES), default=d.dtype, help="float64 is for exactness checks")
    p.add_argument("--l1", type=finite_nonneg, default=None, help="lambda_1 of the variants that have an L1 penalty")
    p.add_argument("--l2", type=finite_nonneg, default=None, help="lambda_2 of the variants that have an L2 penalty")
    p.add_argument("--val", action="store_true", help="train on the first 50k, evaluate on the last 10k train images")
    p.add_argument("--data", default=d.data, help="MNIST folder (torchvision layout: <data>/MNIST/raw)")
    p.add_argument("--out", default=d.out, help="where <name>.json, checkpoints and state/ go")
    p.add_argument("--name", default="", help="file name stem (default: the variant)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/state/ after an interruption")
    p.add_argument("--overwrite", action="store_true", help="replace a results file that holds another config")
    args = p.parse_args(argv)
    for name in ("dropout", "warmup"):
        if getattr(args, name) >= 1:
            p.error(f"argument --{name}: {getattr(args, name)} must be < 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda was asked for but torch sees no CUDA device")
    if args.name and (os.sep in args.name or args.name.startswith(".") or len(args.name) > 100 or len(args.variant) > 1):
        p.error(f"argument --name: {args.name[:40]!r} must be a plain file name of at most 100 characters, for one variant")
    if args.packed and len({VARIANTS[v].norm for v in args.variant}) > 1:
        p.error("argument --packed: a pack needs one kind of norm; train bn and gbn variants in separate packs")
    for key in ("l1", "l2"):  # an override sets the lambda of the variants that have that penalty, never adds one
        if getattr(args, key) is not None and not any(getattr(VARIANTS[v], key) for v in args.variant):
            have = ", ".join(n for n, v in VARIANTS.items() if getattr(v, key))
            p.error(f"argument --{key}: none of {', '.join(args.variant)} has an {key.upper()} penalty (these do: {have})")
    fields = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite", "variant", "l1", "l2")}
    fields.update(train_limit=args.train_limit or 0, test_limit=args.test_limit or 0)
    cfgs = []
    for v in args.variant:
        lam = {key: getattr(args, key) if getattr(args, key) is not None and getattr(VARIANTS[v], key)
               else getattr(VARIANTS[v], key) for key in ("l1", "l2")}
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device
        cfgs.append(Config(variant=v, **lam, **(fields | {"device": device, "name": args.name or v, "norm": VARIANTS[v].norm})))
    return cfgs, args, p


# -----------------------------------------------------------------------------
# main: check everything that can fail before training, then train pack by pack, saving after each

def git_info():
    def git(*args):
        r = subprocess.run(["git", *args], cwd=results.REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    dirty = git("status", "--porcelain", "--", ".", ":!results", ":!data")  # results/ and data/ change in a study
    return git("rev-parse", "HEAD"), (bool(dirty) if dirty is not None else None)


def main(argv=None):
    cfgs, args, parser = parse_args(argv)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C is a KeyboardInterrupt
    cfg = cfgs[0]  # what all members share: everything but variant, lambdas and name
    out = in_repo(cfg.out, Config.out)
    fail = lambda code, msg: parser.exit(code, f"{parser.prog}: error: {msg}\n")
    seed_everything(0)  # the deterministic flags hold from here on, so env records them truly
    t0, digests = time.perf_counter(), {}
    try:
        os.makedirs(os.path.join(out, "state"), exist_ok=True)
        locks = [results.Lock(out, c.name).__enter__() for c in cfgs]  # released when the process exits
        old = {c.name: results.load(os.path.join(out, f"{c.name}.json"))
               for c in cfgs if os.path.exists(os.path.join(out, f"{c.name}.json")) and not args.overwrite}
        for c in cfgs:
            if c.name in old:
                results.check_merge(os.path.join(out, f"{c.name}.json"), old[c.name], asdict(c))
        split = load_split(cfg, digests)
    except (ValueError, data.DataError, results.ResultsError) as e:
        fail(2, e)
    except OSError as e:
        fail(2, f"cannot write to --out {out}: {e.strerror}")
    except KeyboardInterrupt:
        fail(130, "interrupted while starting; nothing was written")
    commit, dirty = git_info()
    env = {"command": " ".join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)]),
           "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__, "python": platform.python_version(),
           "device": cfg.device, "device_name": torch.cuda.get_device_name() if cfg.device == "cuda"
           else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "deterministic": torch.are_deterministic_algorithms_enabled(), "data_sha256": data.data_sha256(digests),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    runs = {c.name: list(old[c.name]["runs"]) if c.name in old else [] for c in cfgs}
    done = {c.name: {r["seed"] for r in runs[c.name]} for c in cfgs}
    for c in cfgs:
        if done[c.name] & set(c.seeds):
            tqdm.write(f"{c.name}: seeds {sorted(done[c.name] & set(c.seeds))} are already in {out}/{c.name}.json "
                       f"with this config; kept (--overwrite trains them again)")
    todo = [(c, s) for c in cfgs for s in c.seeds if s not in done[c.name]]
    packs = [todo] if cfg.packed and todo else [[m] for m in todo]
    state_of = lambda pack: os.path.join(out, "state", "+".join(dict.fromkeys(c.name for c, _ in pack)) + "-seed"
                                         + "-".join(str(s) for s in dict.fromkeys(s for _, s in pack)) + ".pt")
    if args.resume and todo and not any(os.path.exists(state_of(p)) for p in packs):
        fail(2, f"--resume: no saved state for {', '.join(runs)} seeds {[s for _, s in todo]} in {out}/state")
    minutes = 0.25 * len(split[0]) / 60000 * cfg.epochs * len(todo)
    tqdm.write(f"training {len(todo)} model(s) ({', '.join(f'{c.name}: l1={c.l1:g} l2={c.l2:g} norm={c.norm}' for c in cfgs)})"
               f" x {cfg.epochs} epochs on {cfg.device}{', packed' if cfg.packed else ''}, {len(split[0]):,} train images;"
               f" expect ~{minutes:.{0 if minutes >= 10 else 1}f} min on 2 CPU cores (~15 s per model-epoch), far less on a GPU")
    for pack in packs:
        try:
            new, weights = train_pack(pack, split, state_of(pack), args.resume, env)
            for (c, seed), run, w in zip(pack, new, weights):
                runs[c.name] = [r for r in runs[c.name] if r["seed"] != seed] + [run]
                order = {s: i for i, s in enumerate(c.seeds)}
                runs[c.name].sort(key=lambda r: (order.get(r["seed"], -1), r["seed"]))  # kept seeds first
                result = {"schema": results.SCHEMA, "variant": c.variant, "config": asdict(c) | {"seeds": [r["seed"] for r in runs[c.name]]},
                          "env": run["env"], "runs": runs[c.name], "summary": results.summarize(runs[c.name])}
                results.save(out, c.name, result, {seed: w})
            if os.path.exists(state_of(pack)):  # only now, with its results written, does the run need no state
                os.remove(state_of(pack))
        except ValueError as e:
            fail(2, e)
        except OSError as e:  # a full disk, a folder removed under us: finished epochs stay in state/
            fail(1, f"cannot write {e.filename or out}: {e.strerror}; free the space, then the same command with --resume")
        except KeyboardInterrupt:
            fail(130, "interrupted; finished epochs are saved, continue with the same command and --resume")
    failed = False
    for c in cfgs:
        s = results.summarize(runs[c.name]) if runs[c.name] else None
        if s and s["final_test_acc_mean"] is not None:
            print(f"{c.name}: final {'val' if c.val else 'test'} acc {results.describe(s)} -> {out}/{c.name}.json")
        if s and s["diverged"]:
            print(f"{c.name}: seeds {s['diverged']} diverged", file=sys.stderr)
            failed = True
    for lock in locks:
        lock.__exit__()
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
