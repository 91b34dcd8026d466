"""The benchmark harness (pytest-benchmark, run by `make bench`; not a test: it asserts nothing): forward, forward + backward and the
compute step, one model at batch 32 and packs, on CPU and on CUDA when present; each speed lever of train.py on
its own and all together in the real training loop, taken in turn with the classic torchvision + DataLoader step
(the baseline); real epochs of the default path, run as a program; on a GPU, the packed 20-model study. The GPU
study writes the gpu section of results/bench/summary.json at once; a module fixture writes the cpu section after
the file's benchmarks ran, whatever their order.
Timings are recorded, never asserted; they mean something only on an otherwise idle machine."""
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pytest
import torch
import torch.nn.functional as F

import results
import loop
import train
from conftest import DATA
from model import Net

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STEPS_PER_EPOCH = math.ceil(60000 / 32)
ROUNDS, CHUNK = 8, 25      # levers: each runs CHUNK real-loop steps in turn, ROUNDS times (200 steps each)
MEANS, LEVERS = {}, {}      # test name -> median seconds per call; lever -> its numbers, for the summary
PROFILE = {}                # where a default CPU step's time goes, for the summary
EPOCHS = []                 # seconds of each epoch of train.py run as a program, for the summary
# each lever switched on alone on top of the original path, then all together (= today's default path)
ORIGINAL = ["--no-compile", "--precision", "fp32", "--dropout-masks", "bernoulli", "--eval-batch-size", "32"]
LEVER_ARGS = {
    "original": ORIGINAL,
    "bytes_masks": ["--no-compile", "--precision", "fp32", "--eval-batch-size", "32"],
    "bf16": ["--no-compile", "--dropout-masks", "bernoulli", "--eval-batch-size", "32"],
    "compile": ["--precision", "fp32", "--eval-batch-size", "32"],  # needs bytes masks: bernoulli_ breaks the graph
    "eval_batch_500": ["--no-compile", "--precision", "fp32", "--dropout-masks", "bernoulli"],
    "all (default)": [],
}
# not a lever but a bound, measured in the same rotation: the default path with no dropout at all, the best
# that any faster way of drawing or applying the masks could give
NO_DROPOUT = ["--dropout", "0"]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def config(device, *args, variant="l1l2"):
    return train.parse_args(["--variant", variant, "--device", device, "--data", DATA, *args])[0][0]


def setup(device, k, *args):
    cfg = config(device, *args)
    net, pack = loop.build_pack([(cfg, s) for s in range(k)], device)
    opt, _ = loop.optimizer(net, cfg, STEPS_PER_EPOCH)
    x = torch.randn(32, k, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32, k), device=device)
    return cfg, net, pack, opt, x, y


def record(benchmark, name, fn, device, rounds=20):
    def timed():
        fn()
        sync(device)  # the GPU runs asynchronously: time the work, not the launch
    benchmark.pedantic(timed, rounds=rounds, iterations=5, warmup_rounds=2)
    MEANS[name] = benchmark.stats.stats.median  # this VM's speed drifts by +-15% (host load): the median resists it


def test_gpu_study(benchmark, mnist):
    """The GPU study and its classic baseline, written to the summary's gpu section at once (skipped without a GPU).
    First in the file, so that a run stopped by a time limit still has the number that matters most."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    merge_summary("gpu", benchmark.pedantic(lambda: gpu_study(mnist), rounds=1, iterations=1))


@pytest.mark.parametrize("k", [1, 20])
@pytest.mark.parametrize("device", DEVICES)
def test_forward(benchmark, device, k):
    _, net, _, _, x, _ = setup(device, k)
    record(benchmark, f"forward-{device}-{k}", lambda: net(x, net.draw_noise(len(x))), device)


@pytest.mark.parametrize("k", [1, 20])
@pytest.mark.parametrize("device", DEVICES)
def test_forward_backward(benchmark, device, k):
    _, net, _, _, x, y = setup(device, k, "--no-compile")
    def step():
        F.cross_entropy(net(x, net.draw_noise(len(x))).flatten(0, 1), y.flatten()).backward()
    record(benchmark, f"fwd_bwd-{device}-{k}", step, device)


@pytest.mark.parametrize("device,k", [(d, k) for d in DEVICES for k in ([1, 5] if d == "cpu" else [1, 5, 20])])
def test_compute_step(benchmark, device, k):
    """Pure compute of the default path: the (compiled, bf16) forward + loss + penalty, backward and SGD step on a
    fixed batch, masks drawn as in training; no data handling."""
    cfg, net, pack, opt, x, y = setup(device, k)
    def step():
        total, *_ = pack["step"](net, x, y, net.draw_noise(len(x)), pack["l1"], pack["l2"], cfg.precision == "bf16")
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    for _ in range(3):  # compile outside the timing
        step()
    record(benchmark, f"compute-{device}-{k}", step, device)


def test_levers(benchmark, mnist):
    """Each lever of train.py switched on alone, all of them (the default), the default without dropout (a bound)
    and the classic step, one model on the CPU, measured interleaved: CHUNK steps of each in turn, ROUNDS times,
    the median chunk per lever. This VM's speed drifts by 20% from minute to minute; taken in turn, every lever
    sees the same drift. Then one evaluation of the 10,000 test images per lever."""
    train_x, train_y = mnist[0][:32 * CHUNK * ROUNDS], mnist[1][:32 * CHUNK * ROUNDS]
    packs = {}
    for lever, args in (LEVER_ARGS | {"no_dropout": NO_DROPOUT}).items():
        cfg = config("cpu", *args)
        net, pack = loop.build_pack([(cfg, 0)], "cpu")
        opt, sched = loop.optimizer(net, cfg, STEPS_PER_EPOCH)
        loop.train_one_epoch(net, opt, sched, pack, train_x[:640], train_y[:640], cfg, "warm-up")  # compiles here
        packs[lever] = cfg, net, pack, opt, sched
    classic = classic_step("cpu")
    times = {lever: [] for lever in [*packs, "classic"]}
    def rotation():
        for r in range(ROUNDS):
            x, y = train_x[r * 32 * CHUNK:(r + 1) * 32 * CHUNK], train_y[r * 32 * CHUNK:(r + 1) * 32 * CHUNK]
            for lever in times:
                t0 = time.perf_counter()
                if lever == "classic":
                    for _ in range(CHUNK):
                        classic()
                else:
                    cfg, net, pack, opt, sched = packs[lever]
                    loop.train_one_epoch(net, opt, sched, pack, x, y, cfg, lever)
                times[lever].append((time.perf_counter() - t0) / CHUNK)
    benchmark.pedantic(rotation, rounds=1, iterations=1)
    for lever, (cfg, net, *_) in packs.items():
        step_s = statistics.median(times[lever])
        t0 = time.perf_counter()
        loop.evaluate(net, mnist[2], mnist[3], cfg)
        eval_s = time.perf_counter() - t0
        LEVERS[lever] = {"step_ms": round(1000 * step_s, 2), "eval_s": round(eval_s, 2),
                         "epoch_s": round(step_s * STEPS_PER_EPOCH + eval_s, 2),
                         "args": " ".join(LEVER_ARGS.get(lever, NO_DROPOUT))}
    LEVERS["classic"] = {"step_ms": round(1000 * statistics.median(times["classic"]), 2),
                         "args": "torchvision MNIST + DataLoader (RandomRotation, ToTensor, Normalize), eager fp32"}


def classic_sets():
    """The classic pipeline's data: torchvision's MNIST with per-image PIL transforms (train: RandomRotation)."""
    import torchvision.transforms as T
    from torchvision.datasets import MNIST
    norm = T.Normalize((0.1307,), (0.3081,))
    return (MNIST(DATA, train=True, transform=T.Compose([T.RandomRotation(7), T.ToTensor(), norm])),
            MNIST(DATA, train=False, transform=T.Compose([T.ToTensor(), norm])))


def classic_step(device):
    """One step of the classic loop: torchvision MNIST + DataLoader (RandomRotation, ToTensor, Normalize), one plain
    Net, batch 32, eager fp32."""
    net = Net().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batches = iter(torch.utils.data.DataLoader(classic_sets()[0], batch_size=32, shuffle=True))
    def step():
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


@pytest.mark.parametrize("device", DEVICES)
def test_classic_step(benchmark, device):
    """Baseline: the classic loop's step, on its own."""
    record(benchmark, f"classic-{device}", classic_step(device), device, rounds=40)


# self time per step, by kind: the first kind with a pattern in the event's name wins; the rest is "other"
PROFILE_KINDS = [("convolutions, forward (oneDNN)", ("aten::mkldnn_convolution",)),
                 ("compiled max-pool backward", ("max_pool2d_with_indices_backward",)),
                 ("convolutions, backward (oneDNN)", ("aten::convolution_backward",)),
                 ("other compiled kernels (BatchNorm, ReLU, pools, dropout, loss, penalty)", ("graph_",)),
                 ("dropout bytes: the draw", ("aten::random_",)),
                 ("copies (byte compaction, casts, buffer updates)", ("aten::copy_",)),
                 ("rotation (affine_grid + grid_sample)", ("aten::bmm", "aten::affine_grid", "aten::grid_sampler")),
                 ("SGD + zero_grad", ("Optimizer.", "aten::_foreach")),
                 ("guards of the compiled step", ("TorchDynamo Cache Lookup",))]


def test_cpu_profile(benchmark, mnist, steps=100):
    """Where a step of the default path goes on the CPU: torch.profiler over `steps` real-loop steps (one model),
    self time per kind of work. Inductor records each of its kernels here (cpp.enable_kernel_profile) and is
    called through its Python wrapper, because the C++ one hides the backward's calls: the same kernels, a
    little more overhead."""
    import torch._inductor.config as inductor_config
    cfg = config("cpu")
    net, pack = loop.build_pack([(cfg, 0)], "cpu")
    opt, sched = loop.optimizer(net, cfg, STEPS_PER_EPOCH)
    x, y = mnist[0][:32 * steps], mnist[1][:32 * steps]
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):
        pack["step"] = torch.compile(loop.step_loss, dynamic=False, options={"cpp_wrapper": False})
        loop.train_one_epoch(net, opt, sched, pack, x[:640], y[:640], cfg, "warm-up")  # compiles
    with torch.profiler.profile() as prof:
        benchmark.pedantic(lambda: loop.train_one_epoch(net, opt, sched, pack, x, y, cfg, "profile"),
                           rounds=1, iterations=1)
    other = "other (dispatch, Python, small ops)"
    per_step = {kind: 0.0 for kind, _ in PROFILE_KINDS} | {other: 0.0}
    for e in prof.key_averages():
        kind = next((k for k, patterns in PROFILE_KINDS if any(p in e.key for p in patterns)), other)
        per_step[kind] += e.self_cpu_time_total / 1000 / steps
    PROFILE.update(step_ms=round(benchmark.stats.stats.median * 1000 / steps, 2),
                   self_ms_per_step={k: round(v, 3) for k, v in per_step.items()})


def matmul_tflops(dtype, n=2048, reps=5):
    """Measured throughput of one large matrix product: the CPU's practical peak for that dtype."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def flops_per_training_image():
    """Multiply-adds of the convolutions of one forward pass, x2 FLOPs, x3 for forward + backward."""
    macs = []
    net = Net().eval()
    hooks = [m.register_forward_hook(lambda m, i, o: macs.append(o.numel() * m.in_channels * m.kernel_size[0] *
                                                                 m.kernel_size[1] // m.groups))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    return 3 * 2 * sum(macs)


def merge_summary(section, numbers):
    """Write one section ("cpu" or "gpu") of results/bench/summary.json, keeping the other as it is: the two come
    from different machines."""
    path = os.path.join(results.REPO, "results", "bench", "summary.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    summary = json.load(open(path)) if os.path.exists(path) else {}
    results.write_json(path, summary | {section: numbers})


def test_train_py_epochs(benchmark):
    """Real epochs of train.py's default path, run as a user runs it (a fresh process, one model, 3 epochs; the
    first compiles), each epoch's seconds read from its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "train.py", "--variant", "l1l2", "--epochs", "3", "--device", "cpu",
                   "--data", DATA, "--out", tmp]
        benchmark.pedantic(lambda: subprocess.run(command, cwd=results.REPO, check=True, capture_output=True),
                           rounds=1, iterations=1)
        EPOCHS.extend(e["seconds"] for e in json.load(open(os.path.join(tmp, "l1l2.json")))["runs"][0]["epochs"])


@pytest.fixture(scope="module", autouse=True)
def cpu_summary():
    """After every benchmark of this file ran, whatever their order: the CPU section of summary.json, from the
    compute, classic, lever and train.py measurements of this one run (written only if all of them ran)."""
    yield
    missing = [k for k in ("compute-cpu-1", "compute-cpu-5", "classic-cpu") if k not in MEANS] + \
        [k for k, have in (("levers", "classic" in LEVERS), ("train.py epochs", EPOCHS)) if not have]
    if missing:
        print(f"\nsummary.json's cpu section not written: this run did not measure {', '.join(missing)}")
        return
    merge_summary("cpu", cpu_numbers())


def cpu_numbers():
    epoch_s = statistics.median(EPOCHS[1:])  # training + evaluating the 10,000 test images, after the compiling epoch
    flops = flops_per_training_image() * 60000
    fp32_peak, bf16_peak = matmul_tflops(torch.float32), matmul_tflops(torch.bfloat16)
    cpu = {"epoch_s": round(epoch_s, 2), "train_py_epochs_s": EPOCHS,
           "compute_epoch_s": round(MEANS["compute-cpu-1"] * STEPS_PER_EPOCH, 2),
           "classic_epoch_s": round(MEANS["classic-cpu"] * STEPS_PER_EPOCH, 2),
           "threads": torch.get_num_threads(), "steps_per_epoch": STEPS_PER_EPOCH,
           "levers": LEVERS, "profile": PROFILE,
           "per_model_epoch_s_packed_5": round(MEANS["compute-cpu-5"] / 5 * STEPS_PER_EPOCH, 2),
           "training_tflop_per_epoch": round(flops / 1e12, 3),
           "matmul_peak_tflops": {"fp32": round(fp32_peak, 3), "bf16": round(bf16_peak, 3)},
           "note": "epoch_s: `train.py --variant l1l2 --epochs 3` in a fresh process (the default path, one model): "
                   "the median of epochs 2-3 as its JSON records them (training + evaluating 10k test images; "
                   "epoch 1 compiles); compute and classic epochs = measured median step time x steps per epoch; "
                   f"levers: median of {ROUNDS} interleaved chunks of {CHUNK} real-loop steps x steps per epoch + one "
                   "evaluation; no_dropout: the default with --dropout 0, a bound, not a lever; "
                   "step_speedup_vs_classic_interleaved: the classic step over the default step, both from that "
                   "interleaved run; profile: self CPU time per step by kind, torch.profiler over 100 real-loop steps "
                   "of the default path (inductor's kernel records on, its Python wrapper)"}
    cpu["ratio_to_compute"] = round(cpu["epoch_s"] / cpu["compute_epoch_s"], 3)
    cpu["speedup_vs_classic"] = round(cpu["classic_epoch_s"] / cpu["epoch_s"], 2)
    cpu["step_speedup_vs_classic_interleaved"] = round(LEVERS["classic"]["step_ms"] /
                                                       LEVERS["all (default)"]["step_ms"], 2)
    cpu["flop_floor_s"] = {k: round(flops / (v * 1e12), 2) for k, v in cpu["matmul_peak_tflops"].items()}
    cpu["fraction_of_floor"] = {k: round(v / epoch_s, 3) for k, v in cpu["flop_floor_s"].items()}
    return cpu


# -----------------------------------------------------------------------------
# the GPU study: what the project promises a GPU does, timed end to end against the classic loop on the same card

def classic_epoch(device):
    """One model-epoch of the classic loop (pytorch/examples style): torchvision MNIST + DataLoader with
    RandomRotation/ToTensor/Normalize, one plain Net, batch 32, then the 10,000 test images at batch 1000."""
    train_set, test_set = classic_sets()
    net = Net().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sync(device)
    t0 = time.perf_counter()
    net.train()
    for x, y in torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True):
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test_set, batch_size=1000):
            net(x.to(device)).argmax(1).eq(y.to(device)).sum().item()
    sync(device)
    return time.perf_counter() - t0


def profile_steps(members, mnist, device, steps=40):
    """Where a step of the packed study goes: its wall time, the GPU's busy time, and the CUDA runtime calls
    (kernel launches, copies, syncs) per step, from torch.profiler over `steps` steps after a warm-up."""
    cfg = members[0][0]
    net, pack = loop.build_pack(members, device)
    opt, sched = loop.optimizer(net, cfg, steps)
    x, y = mnist[0][:32 * steps].to(device), mnist[1][:32 * steps].to(device)
    run = lambda: loop.train_one_epoch(net, opt, sched, pack, x, y, cfg, "profile")
    run()  # compiles
    sync(device)
    t0 = time.perf_counter()
    run()
    sync(device)
    wall_ms = 1000 * (time.perf_counter() - t0) / steps
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        run()
        sync(device)
    averages = prof.key_averages()
    busy_us = sum(getattr(e, "self_device_time_total", 0) for e in averages)
    calls = {e.key: round(e.count / steps, 2) for e in averages if e.key.startswith(("cuda", "cu")) and e.count >= steps}
    return {"step_ms": round(wall_ms, 3), "gpu_busy_ms_per_step": round(busy_us / 1000 / steps, 3),
            "runtime_calls_per_step": dict(sorted(calls.items(), key=lambda kv: -kv[1]))}


def gpu_study(mnist, device="cuda", variants=("none", "l1", "l2", "l1l2"), seeds=range(5), epochs=15, limit=None):
    """The study's four penalty variants x 5 seeds packed into one graph, `epochs` epochs, timed end to end
    (building the pack, compiling, training, evaluating every epoch; not the checkpoints, written to a temporary
    folder); then one classic model-epoch on the same device, multiplied out to the same models x epochs."""
    cfgs = train.parse_args(["--variant", ",".join(variants), "--device", device, "--epochs", str(epochs),
                             "--packed", "--data", DATA])[0]
    members = [(c, s) for c in cfgs for s in seeds]
    split = [t[:limit].to(device) for t in mnist]
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        t0 = time.perf_counter()
        runs, _ = loop.train_pack(members, split, os.path.join(tmp, "state.pt"), False, {})
        sync(device)
        wall = time.perf_counter() - t0
    classic_s = classic_epoch(device)
    models = len(members)
    per_epoch = [round(e["seconds"] * models, 2) for e in runs[0]["epochs"]]  # the pack's wall time per epoch
    acc = {c.name: [r["final_test_acc"] for (m, _), r in zip(members, runs) if m.name == c.name] for c in cfgs}
    return {"name": torch.cuda.get_device_name() if device == "cuda" else device, "torch": torch.__version__,
            "models": models, "epochs": epochs, "study_wall_s": round(wall, 1),
            "epoch_wall_s": per_epoch, "steady_epoch_s": round(statistics.median(per_epoch[1:] or per_epoch), 2),
            "classic_epoch_s": round(classic_s, 2), "classic_study_s": round(classic_s * models * epochs, 1),
            "speedup_vs_classic": round(classic_s * models * epochs / wall, 1),
            "final_test_acc_mean": {name: round(sum(a) / len(a), 3) for name, a in acc.items()},
            "profile": profile_steps(members, mnist, device),
            "note": f"study_wall_s: {models} models packed (seeds {list(seeds)} of {', '.join(variants)}), the default "
                    "path (compiled, bf16), every epoch evaluated, end to end including compilation; "
                    "classic_study_s: one measured classic model-epoch (train + test) x models x epochs; profile: "
                    "40 steps of the same pack after a warm-up"}
