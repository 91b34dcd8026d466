"""Train one variant of the 8,286-parameter MNIST CNN over one or more seeds; results go through results.py.

    python train.py --variant l1 --epochs 15 --seeds 0,1,2
    python train.py --variant l2 --l2 3e-4 --val --name l2-3e-4 --out results/sweep   # a validation run
    python train.py --variant l1 --resume          # continue a killed run exactly where it stopped
"""
import os
import signal
import sys

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    # Ctrl-C while starting (torch importing, data loading): one line, not a traceback; main() installs the
    # normal handler just before training, where a KeyboardInterrupt is caught and the saved epochs are named
    signal.signal(signal.SIGINT, lambda *_: (sys.stderr.write("\ntrain.py: interrupted while starting; nothing "
                                                              "was written\n"), os._exit(130)))

import argparse  # noqa: E402
import errno  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import results  # noqa: E402
from loop import DTYPES, compile_problem, seed_everything, train_pack  # noqa: E402
from regularizers import VARIANTS  # noqa: E402


# -----------------------------------------------------------------------------
# config: every knob in one place, all of it written into the JSON

@dataclass
class Config:
    variant: str = "none"
    epochs: int = 15               # the study's length: the recipe was chosen at 15 epochs (results/recipe.json)
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
    if args.dtype == "float64" and args.precision != "fp32":  # bf16 autocast leaves float64 alone: say what runs
        p.error("argument --dtype: float64 is for exactness checks and needs --precision fp32")
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
    def git(*args):  # None, recorded as unknown, where there is no git or no repository (a copied tree)
        try:
            r = subprocess.run(["git", *args], cwd=results.REPO, capture_output=True, text=True)
        except OSError:
            return None
        return r.stdout.strip() if r.returncode == 0 else None
    dirty = git("status", "--porcelain", "--", ".", ":!results", ":!data")  # results/ and data/ change in a study
    return git("rev-parse", "HEAD"), (bool(dirty) if dirty is not None else None)


def main(argv=None):
    cfgs, args, parser = parse_args(argv)
    cfg = cfgs[0]  # what all members share: everything but variant, lambdas and name
    out = in_repo(cfg.out, Config.out)
    locks = []

    def fail(code, msg):  # one line and an exit code; the locks go first, so an in-process caller may retry
        for lock in locks:
            lock.__exit__()
        parser.exit(code, f"{parser.prog}: error: {msg}\n")

    seed_everything(0)  # the deterministic flags hold from here on, so env records them truly
    t0, digests = time.perf_counter(), {}
    try:
        os.makedirs(os.path.join(out, "state"), exist_ok=True)
        for c in cfgs:
            locks.append(results.Lock(out, c.name).__enter__())
        old = {c.name: results.load(os.path.join(out, f"{c.name}.json"))
               for c in cfgs if os.path.exists(os.path.join(out, f"{c.name}.json")) and not args.overwrite}
        # decided before the merge check: a run that fell back to eager must compare as eager
        fallback = compile_problem(cfg)
        if fallback:
            tqdm.write(f"torch.compile does not work here ({fallback}); training eagerly (--no-compile to skip this)")
            for c in cfgs:
                c.compile = False
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
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **({"compile_fallback": fallback} if fallback else {})}
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
    # measured on the 2-core CPU machine: seconds per 60k-image model-epoch, solo or with seeds packed; Ghost BN ~1.5x
    per_epoch = lambda c: (15 if cfg.packed and len(todo) > 1 else 20) * (1.5 if c.norm == "gbn" else 1)
    minutes = sum(per_epoch(c) for c, _ in todo) / 60 * len(split[0]) / 60000 * cfg.epochs
    pace = ("on a GPU, per-step overheads set the pace: an H200 took ~1.1 s per model-epoch with 20 models packed"
            if cfg.device == "cuda" else f"expect ~{minutes:.{0 if minutes >= 10 else 1}f} min on 2 CPU cores "
            f"(~{per_epoch(cfg):.0f} s per model-epoch)")
    if todo:
        tqdm.write(f"training {len(todo)} model(s) ({', '.join(f'{c.name}: l1={c.l1:g} l2={c.l2:g} norm={c.norm}' for c in cfgs)})"
                   f" x {cfg.epochs} epochs on {cfg.device}{', packed' if cfg.packed else ''}, {len(split[0]):,} train images; {pace}")
    else:
        tqdm.write(f"nothing to train: every seed asked for is already in {out}")
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C is a KeyboardInterrupt
    for pack in packs:
        try:
            new, weights = train_pack(pack, split, state_of(pack), args.resume, env)
            for (c, seed), run in zip(pack, new):
                runs[c.name] = [r for r in runs[c.name] if r["seed"] != seed] + [run]
            newest = {c.name: (c, run) for (c, _), run in zip(pack, new)}
            for name, (c, run) in newest.items():  # one save per results file, all its new seeds in it
                order = {s: i for i, s in enumerate(c.seeds)}
                runs[name].sort(key=lambda r: (order.get(r["seed"], -1), r["seed"]))  # kept seeds first
                result = {"schema": results.SCHEMA, "variant": c.variant,
                          "config": asdict(c) | {"seeds": [r["seed"] for r in runs[name]]},
                          "env": run["env"], "runs": runs[name], "summary": results.summarize(runs[name])}
                results.save(out, name, result, {s: w for (m, s), w in zip(pack, weights) if m.name == name})
            if os.path.exists(state_of(pack)):  # only now, with its results written, does the run need no state
                os.remove(state_of(pack))
        except ValueError as e:
            fail(2, e)
        except OSError as e:  # a full disk, a folder removed under us: finished epochs stay in state/
            fix = "free some space" if e.errno == errno.ENOSPC else "fix that"
            fail(1, f"cannot write {e.filename or out}: {e.strerror}; {fix}, then run the same command with --resume")
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
