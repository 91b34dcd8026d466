"""The training engine: K models trained as one pack (K = 1 when training one at a time), each with its own
weights, data order, augmentation and dropout stream; the compiled step, an epoch, the evaluation, and saving the
per-epoch state for --resume (state.py names and reads it). train.py decides what to train and where it goes;
this module trains it.
"""
import ctypes
import logging
import math
import os
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import model as model_lib
import results
import state as state_lib
import stats
from model import DTYPES
from regularizers import lambdas, match_norms, norm_partners, penalized, penalty


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
    # ...which also fills every new tensor with NaN, so that reading uninitialised memory would repeat; no kernel
    # here reads it (the same-command tests would catch one that did), and the fills cost ~0.2 ms of a ~8 ms step
    torch.utils.deterministic.fill_uninitialized_memory = False


def keep_freed_memory():
    """Ask glibc to keep freed memory instead of handing blocks of 128 KB-32 MB back to the OS and mapping them
    afresh, one page fault per 4 KB, on the next allocation: the evaluation (batches of 500) paid ~0.35 s per
    epoch for that. Changes no number; a no-op where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: allocations up to 1 GiB come from the heap...
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: ...which keeps up to 1 GiB of free memory for the next one


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


def compile_problem(cfg):
    """Why torch.compile cannot be used for this run, or None. A tiny probe first, so a machine without a C++
    compiler trains eagerly; main() decides this once, before a results file is checked or written."""
    if not cfg.compile:
        return None
    if cfg.dropout_masks == "bernoulli" and cfg.dropout:  # bernoulli_ on a torch.Generator breaks the graph
        return "--dropout-masks bernoulli draws inside the step, which torch.compile cannot trace"
    # inductor's CPU build logs "No CUDA runtime is found" on every CPU-only machine: noise, not news
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        compiled(lambda t: t * 2 + 1, cfg.device)(torch.ones(3, device=cfg.device))
    except Exception as e:  # InductorError, CppCompileError, ...: whatever the reason, eager still works
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return None


def epoch_orders(pack, n, cfg):
    """(M, K) indices into the training images for the next epoch: one pass in a fresh order per model (over its
    own subset where it has one) or, with cfg.steps, the next steps/epochs full batches cut from a stream of
    such passes (what is left over waits in pack["pending"] for the next segment)."""
    gens, pool = pack["data_gens"], pack["subsets"]                                # pool: (N, K) or None

    def one_pass():
        perm = torch.stack([torch.randperm(n if pool is None else len(pool), generator=g, device=g.device)
                            for g in gens], 1)
        return perm if pool is None else pool.gather(0, perm)
    if not cfg.steps:
        return one_pass()
    need = cfg.steps // cfg.epochs * cfg.batch_size
    while len(pack["pending"]) < need:
        pack["pending"] = torch.cat([pack["pending"], one_pass()])
    orders, pack["pending"] = pack["pending"][:need], pack["pending"][need:]
    return orders


def train_one_epoch(net, opt, sched, pack, train_x, train_y, cfg, desc):
    """One epoch (or one segment of cfg.steps) of K packed models, each on its own data order and augmentation;
    returns (K,) metrics."""
    net.train()
    k, dev = net.k, train_x.device
    orders = epoch_orders(pack, len(train_x), cfg)                                              # (n, K)
    n = len(orders)
    # sums stay on the device; .item() forces a sync, so it is called once per epoch, not per step
    loss_sum, pen_sum, correct = [torch.zeros(k, device=dev, dtype=torch.float64) for _ in range(3)]
    for start in tqdm(range(0, n, cfg.batch_size), desc=desc, leave=False, disable=None):
        # one gather and one rotation for all K models (a GPU pays per kernel launch, not per image)
        idx = orders[start:start + cfg.batch_size]                                              # (B, K)
        x = data.augment(train_x[idx], cfg.normalize, cfg.rotate_deg, pack["data_gens"], DTYPES[cfg.dtype])
        y = train_y[idx].long()                                                                 # (B, K)
        noise = net.draw_noise(len(x)) if cfg.dropout_masks == "bytes" and cfg.dropout else None
        total, data_loss, pen, logits = pack["step"](net, x.contiguous(memory_format=memory_format(cfg)), y, noise,
                                                     pack["l1"], pack["l2"], cfg.precision == "bf16")
        opt.zero_grad(set_to_none=True)
        total.backward()  # the models share no parameter: model k's gradient is its own loss's
        opt.step()
        if pack["match"]:
            match_norms(net, opt, *pack["match"])
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

def build_pack(members, device, subsets=None):
    """Initial weights, data generator and dropout generator of each member come from its seed alone; subsets,
    where given, are each member's training indices (all of one size)."""
    cfg = members[0][0]
    keep_freed_memory()
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
    lam = lambda key: lambdas(members, key, device, DTYPES[cfg.dtype])
    return net, {"data_gens": data_gens, "drop_gens": drop_gens, "l1": lam("l1"), "l2": lam("l2"),
                 "match": norm_partners(members, device),
                 "step": compiled(step_loss, device) if cfg.compile else step_loss,
                 "subsets": torch.stack(subsets, 1).to(device) if subsets else None,
                 "pending": torch.empty((0, len(members)), dtype=torch.int64, device=device)}


def model_memory(cfg, k=1):
    """Bytes k more models in a pack cost: ~87 MB each, measured (peak RSS of 1 vs 10 packed models, 10,000
    evaluation images), most of it the evaluation's activations, so it grows with an eval batch above 500."""
    return k * 87e6 * max(1.0, cfg.eval_batch_size / 500)


def compiled(fn, device):
    """torch.compile with static shapes; on the CPU the generated code is called from C++ (cpp_wrapper) rather than
    Python: the same kernels, ~0.3 ms less per step of ~8, and the same cold compile time."""
    return torch.compile(fn, dynamic=False, options={"cpp_wrapper": True} if device == "cpu" else None)


def param_groups(net, cfg):
    """SGD's parameter groups: one, every parameter alike. A knob that treats some parameters apart (weight decay
    on the penalized weights only, docs/adding-a-variant.md) splits them here."""
    return [{"params": list(net.parameters())}]


def optimizer(net, cfg, steps_per_epoch):
    """SGD with Nesterov momentum under OneCycle (lr up for cfg.warmup of the steps, then down; momentum against it)."""
    lo, hi = cfg.momentum_range
    # foreach: one call per update for all 21 tensors instead of a Python loop over them; the same kernels, same bits
    opt = torch.optim.SGD(param_groups(net, cfg), lr=cfg.lr, momentum=hi if cfg.cycle_momentum else cfg.momentum,
                          nesterov=True, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, epochs=cfg.epochs, pct_start=cfg.warmup,
                                                steps_per_epoch=steps_per_epoch, cycle_momentum=cfg.cycle_momentum,
                                                base_momentum=lo, max_momentum=hi)
    return opt, sched


def train_pack(members, split, state_path, resume, env, subsets=None):
    """Train K members for cfg.epochs; save state after every epoch; return (run entries, weights per member)."""
    cfg = members[0][0]
    train_x, train_y, test_x, test_y = split
    net, pack = build_pack(members, cfg.device, subsets)
    per_epoch = cfg.steps // cfg.epochs if cfg.steps else math.ceil(len(subsets[0] if subsets else train_x) / cfg.batch_size)
    opt, sched = optimizer(net, cfg, per_epoch)
    k = len(members)
    label = ", ".join(f"{m.name} seed {s}" for m, s in members)
    # the drop probability the masks really use: "bytes" masks round p to a multiple of 1/256
    p = model_lib.quantized_p(cfg.dropout) if cfg.dropout_masks == "bytes" else cfg.dropout
    histories, runs = [[] for _ in members], [{"seed": s, "status": "ok", "pack_size": k, "dropout_p": p}
                                              for _, s in members]
    for run, idx in zip(runs, subsets or []):  # which images each seed trained on, by hash
        run.update(train_images=len(idx), train_subset_sha256=data.indices_sha256(idx))
    if resume and os.path.exists(state_path):
        state = state_lib.load(state_path, members, cfg.device)
        net.load_state_dict(state["model"]); opt.load_state_dict(state["opt"]); sched.load_state_dict(state["sched"])
        for g, st in zip(pack["data_gens"] + pack["drop_gens"], state["rng"]):
            g.set_state(st)
        histories, runs, pack["pending"] = state["histories"], state["runs"], state["pending"].to(cfg.device)
        tqdm.write(f"{label}: resumed after epoch {len(histories[0])}")
    for epoch in range(len(histories[0]) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        momentum = opt.param_groups[0]["momentum"]
        train_loss, pen, train_acc = train_one_epoch(net, opt, sched, pack, train_x, train_y, cfg,
                                                     f"{label} e{epoch}" if k == 1 else f"{k} models e{epoch}")
        test_loss, test_acc, _, _ = evaluate(net, test_x, test_y, cfg)
        seconds = round((time.perf_counter() - t0) / k, 3)  # a pack's wall time, shared by its K models
        for i, ((m, seed), norms) in enumerate(zip(members, model_lib.weight_norms(net))):
            if runs[i]["status"] != "ok":
                continue
            finite = lambda v: v if math.isfinite(v) else None  # JSON has no NaN: a diverged loss is null
            histories[i].append({"epoch": epoch, "train_loss": finite(train_loss[i]), "penalty": finite(pen[i]),
                                 "train_acc": train_acc[i], "test_loss": finite(test_loss[i]), "test_acc": test_acc[i],
                                 **({"step": epoch * per_epoch} if cfg.steps else {}),
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
        results.save_torch(state_path, {"members": state_lib.signature(members, cfg.device), "model": net.state_dict(), "opt": opt.state_dict(),
                                        "sched": sched.state_dict(), "histories": histories, "runs": runs,
                                        "rng": [g.get_state() for g in pack["data_gens"] + pack["drop_gens"]],
                                        "pending": pack["pending"].cpu()})
    preds = evaluate(net, test_x, test_y, cfg)[3]
    weights = model_lib.unpack({key: v.cpu() for key, v in net.state_dict().items()}, k)  # plain Net state_dicts
    for i, (m, seed) in enumerate(members):
        wrong = (preds[i] != test_y.long()).nonzero().flatten().tolist()
        runs[i].update(epochs=histories[i], near_zero_fraction=model_lib.near_zero_fraction(weights[i]),
                       misclassified=[{"index": j, "label": int(test_y[j]), "pred": int(preds[i][j])} for j in wrong],
                       env=env | {"wall_s": round(sum(h["seconds"] for h in histories[i]), 1)})
        runs[i].update(stats.derived(runs[i], asdict(m)))  # final and best accuracy, as every reader checks them
    return runs, weights
