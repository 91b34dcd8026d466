"""The run's configuration: one Config with every knob and why, and the command line that fills it; every bad
value is a one-line error and exit 2 (argparse). train.py writes asdict(Config) into every results JSON."""
import argparse
import math
from dataclasses import dataclass, field, fields

import torch

import results
from model import DTYPES, quantized_p
from regularizers import VARIANTS

FULL = 60000  # --train-subset 60000: the whole training split (60,000 images; the first 50,000 with --val)
MAX_SUBSET = 45060  # 10 x 4,506, the fives among the first 50,000 training images (the rarest class there)


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
    penalized: str = "all"         # the convolutions the penalty covers: "all" or "conv9" (the variant table's)
    match_norms: str = ""          # a variant's name: conv1-8 rescaled to its norms after every step (same seed, same pack)
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
    train_subset: int = 0          # N: N/10 images per class from the first 50k, drawn per seed; 60000 = all (data-size study)
    steps: int = 0                 # > 0: this many optimizer steps in `epochs` equal segments, each ending in an evaluation
    test_limit: int = 0
    data: str = "data"             # relative defaults mean the repository's folders, wherever train.py runs from
    out: str = "results"
    name: str = ""                 # file name stem; defaults to the variant
    packed: bool = False           # several models in one grouped-conv graph ("a pack")
    dtype: str = "float32"         # float64 only to check packed == solo without float32 rounding noise
    device: str = "auto"


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
FLOAT32_MAX = 3.4e38  # the step computes in float32: a larger value overflows in the first step
finite_nonneg = typed(float, lambda v: math.isfinite(v) and 0 <= v < FLOAT32_MAX, "must be a finite number >= 0")
finite_pos = typed(float, lambda v: math.isfinite(v) and 0 < v < FLOAT32_MAX, "must be a finite number > 0")
below_one = typed(float, lambda v: 0 <= v < 1, "must be a number >= 0 and < 1")
fraction = typed(float, lambda v: 0 < v < 1, "must be a number > 0 and < 1")
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
                              ("dropout", below_one, "dropout p"), ("warmup", fraction, "fraction of steps to the peak lr"),
                              ("rotate_deg", finite_nonneg, "rotation range in degrees"),
                              ("momentum", finite_nonneg, "SGD momentum when --no-cycle-momentum"),
                              ("virtual_batch", positive_int, "Ghost BN virtual batch"),
                              ("eval_batch_size", positive_int, "evaluation batch (does not change results)"),
                              ("train_limit", positive_int, "train on the first N images only"),
                              ("test_limit", positive_int, "evaluate on the first N images only"),
                              ("train_subset", positive_int, f"train on N/10 images per class from the first 50k, "
                                                             f"drawn per seed ({FULL} = the whole training set)"),
                              ("steps", positive_int, "optimizer steps in all, in --epochs segments (default: "
                                                      "--epochs passes over the data)")]:
        default = getattr(d, name)
        p.add_argument(flag(name), type=kind, default=default,
                       help=help_ + ("" if name == "steps" else f" (default {default or 'all'})"))
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
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda was asked for but torch sees no CUDA device")
    if args.name in VARIANTS and args.variant != [args.name]:  # readers would take the file for that variant
        p.error(f"argument --name: {args.name!r} names the variant {args.name}; pick another name")
    if not args.out.strip() or not args.data.strip():
        p.error("argument --out/--data: an empty path would mean the current folder; name a folder")
    if args.name and len(args.variant) > 1:
        p.error("argument --name: names one results file, so it goes with one variant")
    if args.name and results.check_name(args.name):
        p.error(f"argument --name: {results.check_name(args.name)}")
    if args.dropout and args.dropout_masks == "bytes" and quantized_p(args.dropout) >= 1:
        p.error(f"argument --dropout: {args.dropout} rounds to 256/256 with --dropout-masks bytes (p is a multiple of "
                f"1/256); use at most {255.49 / 256:.3f}, or --dropout-masks bernoulli")
    if args.dtype == "float64" and args.precision != "fp32":  # bf16 autocast leaves float64 alone: say what runs
        p.error("argument --dtype: float64 is for exactness checks and needs --precision fp32")
    for v in args.variant:  # norm matching reads its partner's weights at every step: both in one pack
        partner = VARIANTS[v].match_norms
        if partner and (not args.packed or partner not in args.variant):
            p.error(f"argument --variant: {v} rescales its conv1-8 to {partner}'s norms after every step; train it "
                    f"together with {partner}: --variant {partner},{v} --packed")
    if args.packed and len({VARIANTS[v].norm for v in args.variant}) > 1:
        p.error("argument --packed: a pack needs one kind of norm; train bn and gbn variants in separate packs")
    for key in ("l1", "l2"):  # an override sets the lambda of the variants that have that penalty, never adds one
        if getattr(args, key) is not None and not any(getattr(VARIANTS[v], key) for v in args.variant):
            have = ", ".join(n for n, v in VARIANTS.items() if getattr(v, key))
            p.error(f"argument --{key}: none of {', '.join(args.variant)} has an {key.upper()} penalty (these do: {have})")
    if args.train_subset and args.train_subset != FULL and (args.train_subset % 10 or args.train_subset > MAX_SUBSET):
        p.error(f"argument --train-subset: {args.train_subset} must be a multiple of 10 up to {MAX_SUBSET:,} (N/10 "
                f"images per class from the first 50,000), or {FULL} for the whole training set")
    if args.train_subset and args.train_limit:
        p.error("argument --train-subset: a subset is a limit of its own; drop --train-limit")
    for flag, limit, n in [("--train-limit", args.train_limit, 50000 if args.val else FULL), ("--test-limit", args.test_limit, 10000)]:
        if limit and limit > n:  # refused here, before --out, its lock or its state/ is created
            p.error(f"argument {flag}: {limit} is larger than the {n:,} images available")
    if args.steps and args.steps % args.epochs:
        p.error(f"argument --steps: {args.steps} must split into --epochs {args.epochs} equal segments")
    common = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite", "variant", "l1", "l2")}
    cfgs = []
    for v in args.variant:
        lam = {key: getattr(args, key) if getattr(args, key) is not None and getattr(VARIANTS[v], key)
               else getattr(VARIANTS[v], key) for key in ("l1", "l2")}
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device
        table = {f.name: getattr(VARIANTS[v], f.name) for f in fields(VARIANTS[v]) if f.name not in lam}
        cfgs.append(Config(variant=v, **lam, **(common | table | {"device": device, "name": args.name or v})))
    return cfgs, args, p
