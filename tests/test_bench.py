"""Benchmarks (pytest-benchmark; skipped by `make test`, run by `make bench`): forward, forward + backward and the
compute step, one model at batch 32 and packs, on CPU and on CUDA when present; each speed lever of train.py on
its own and all together in the real training loop; the classic torchvision + DataLoader pipeline as the
baseline; one real epoch of the default path. The last test writes results/bench/summary.json.
Timings are recorded, never asserted; they mean something only on an otherwise idle machine."""
import math
import os
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
LOOP_STEPS = 200           # steps of the real loop timed per lever
MEANS, LEVERS = {}, {}      # test name -> mean seconds per call; lever -> its numbers, for the summary
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


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def config(device, *args, variant="l1l2"):
    return train.parse_args(["--variant", variant, "--device", device, "--data", DATA, *args])[0][0]


def setup(device, k, *args):
    cfg = config(device, *args)
    net, pack = loop.build_pack([(cfg, s) for s in range(k)], device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(32, k, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32, k), device=device)
    return cfg, net, pack, opt, x, y


def record(benchmark, name, fn, device, rounds=20):
    def timed():
        fn()
        sync(device)  # the GPU runs asynchronously: time the work, not the launch
    benchmark.pedantic(timed, rounds=rounds, iterations=5, warmup_rounds=2)
    MEANS[name] = benchmark.stats.stats.mean


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


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("device", DEVICES)
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


@pytest.mark.parametrize("lever", list(LEVER_ARGS))
def test_lever(benchmark, lever, mnist):
    """One lever of train.py switched on alone (or all of them): LOOP_STEPS steps of the real training loop and
    one evaluation of the 10,000 test images, one model on the CPU."""
    cfg = config("cpu", *LEVER_ARGS[lever])
    net, pack = loop.build_pack([(cfg, 0)], "cpu")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.01, total_steps=10 * STEPS_PER_EPOCH)
    train_x, train_y = mnist[0][:32 * LOOP_STEPS], mnist[1][:32 * LOOP_STEPS]
    loop.train_one_epoch(net, opt, sched, pack, train_x[:640], train_y[:640], cfg, "warm-up")  # compiles here
    benchmark.pedantic(lambda: loop.train_one_epoch(net, opt, sched, pack, train_x, train_y, cfg, lever),
                       rounds=1, iterations=1)
    step_s = benchmark.stats.stats.mean / LOOP_STEPS
    t0 = time.perf_counter()
    loop.evaluate(net, mnist[2], mnist[3], cfg)
    eval_s = time.perf_counter() - t0
    LEVERS[lever] = {"step_ms": round(1000 * step_s, 2), "eval_s": round(eval_s, 2),
                     "epoch_s": round(step_s * STEPS_PER_EPOCH + eval_s, 2), "args": " ".join(LEVER_ARGS[lever])}


@pytest.mark.parametrize("device", DEVICES)
def test_classic_step(benchmark, device):
    """Baseline: torchvision MNIST + DataLoader (RandomRotation, ToTensor, Normalize), one plain Net, batch 32."""
    import torchvision.transforms as T
    from torchvision.datasets import MNIST
    tf = T.Compose([T.RandomRotation(7), T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
    loader = torch.utils.data.DataLoader(MNIST(DATA, train=True, transform=tf), batch_size=32, shuffle=True)
    net = Net().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batches = iter(loader)
    def step():
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    record(benchmark, f"classic-{device}", step, device, rounds=40)


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


def test_zz_summary(benchmark, mnist):
    """One real epoch of train.py's default path (one model, after a warm-up that compiles), then the summary."""
    cfg = config("cpu", "--epochs", "2")
    split = [t for t in mnist]
    net, pack = loop.build_pack([(cfg, 0)], "cpu")
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.95, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, epochs=2, steps_per_epoch=STEPS_PER_EPOCH)
    loop.train_one_epoch(net, opt, sched, pack, split[0][:640], split[1][:640], cfg, "warm-up")
    def one_epoch():
        loop.train_one_epoch(net, opt, sched, pack, split[0], split[1], cfg, "bench epoch")
        loop.evaluate(net, split[2], split[3], cfg)
    benchmark.pedantic(one_epoch, rounds=1, iterations=1)
    epoch_s = benchmark.stats.stats.mean
    flops = flops_per_training_image() * 60000
    fp32_peak, bf16_peak = matmul_tflops(torch.float32), matmul_tflops(torch.bfloat16)
    cpu = {"epoch_s": round(epoch_s, 2),
           "compute_epoch_s": round(MEANS["compute-cpu-1"] * STEPS_PER_EPOCH, 2),
           "classic_epoch_s": round(MEANS["classic-cpu"] * STEPS_PER_EPOCH, 2),
           "threads": torch.get_num_threads(), "steps_per_epoch": STEPS_PER_EPOCH,
           "levers": LEVERS,
           "per_model_epoch_s_packed_5": round(MEANS["compute-cpu-5"] / 5 * STEPS_PER_EPOCH, 2),
           "training_tflop_per_epoch": round(flops / 1e12, 3),
           "matmul_peak_tflops": {"fp32": round(fp32_peak, 3), "bf16": round(bf16_peak, 3)},
           "note": "epoch_s: one real epoch (train + evaluate 10k test images) of the default path, one model; "
                   "compute and classic epochs = measured mean step time x steps per epoch; levers: "
                   f"{LOOP_STEPS} real-loop steps x steps per epoch + one evaluation"}
    cpu["ratio_to_compute"] = round(cpu["epoch_s"] / cpu["compute_epoch_s"], 3)
    cpu["speedup_vs_classic"] = round(cpu["classic_epoch_s"] / cpu["epoch_s"], 2)
    cpu["flop_floor_s"] = {k: round(flops / (v * 1e12), 2) for k, v in cpu["matmul_peak_tflops"].items()}
    cpu["fraction_of_floor"] = {k: round(v / epoch_s, 3) for k, v in cpu["flop_floor_s"].items()}
    summary = {"cpu": cpu}
    if torch.cuda.is_available():
        summary["gpu"] = gpu_study(mnist)
    out = os.path.join(results.REPO, "results", "bench")
    os.makedirs(out, exist_ok=True)
    results.write_json(os.path.join(out, "summary.json"), summary)


def gpu_study(mnist, variants=("none", "l1", "l2", "l1l2"), seeds=range(5), epochs=15):
    """4 variants x 5 seeds x `epochs` packed into one graph on the GPU, timed end to end (incl. evaluation)."""
    cfgs = train.parse_args(["--variant", ",".join(variants), "--device", "cuda", "--epochs", str(epochs), "--packed"])[0]
    split = [t.to("cuda") for t in mnist]
    with tempfile.TemporaryDirectory() as tmp:  # the study's checkpoints are not kept: this only times it
        t0 = time.perf_counter()
        loop.train_pack([(c, s) for c in cfgs for s in seeds], split, os.path.join(tmp, "state.pt"), False, {})
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    models = len(variants) * len(seeds)
    return {"name": torch.cuda.get_device_name(), "models": models, "epochs": epochs, "study_wall_s": round(wall, 1),
            "classic_study_s": round(MEANS["classic-cuda"] * STEPS_PER_EPOCH * epochs * models, 1),
            "note": "classic_study_s extrapolated from the measured classic step time x steps x epochs x models"}
