"""Benchmarks (pytest-benchmark; skipped by `make test`, run by `make bench`): forward, forward+backward and a
full training step, one model at batch 32 and 20 packed models, on CPU and on CUDA when present; the classic
torchvision + DataLoader pipeline as the baseline. The last test writes results/bench/summary.json.
Timings are recorded, never asserted."""
import math
import os
import tempfile
import time

import pytest
import torch
import torch.nn.functional as F

import train
from conftest import DATA, ROOT
from regularizers import penalized, penalty

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STEPS_PER_EPOCH = math.ceil(60000 / 32)
MEANS = {}  # test name -> mean seconds per call, for the summary


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def setup(device, k):
    cfg = train.resolve(train.Config(variant="l1l2", l1=None, l2=None, device=device))
    net, pack = train.build_pack([(cfg, s) for s in range(k)], device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(32, k, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32, k), device=device)
    return cfg, net, pack, opt, x, y


def record(benchmark, name, fn, device):
    def timed():
        fn()
        sync(device)  # the GPU runs asynchronously: time the work, not the launch
    benchmark.pedantic(timed, rounds=20, iterations=5, warmup_rounds=2)
    MEANS[name] = benchmark.stats.stats.mean


@pytest.mark.parametrize("k", [1, 20])
@pytest.mark.parametrize("device", DEVICES)
def test_forward(benchmark, device, k):
    _, net, _, _, x, _ = setup(device, k)
    record(benchmark, f"forward-{device}-{k}", lambda: net(x), device)


@pytest.mark.parametrize("k", [1, 20])
@pytest.mark.parametrize("device", DEVICES)
def test_forward_backward(benchmark, device, k):
    _, net, _, _, x, y = setup(device, k)
    def step():
        F.cross_entropy(net(x).flatten(0, 1), y.flatten()).backward()
    record(benchmark, f"fwd_bwd-{device}-{k}", step, device)


@pytest.mark.parametrize("k", [1, 20])
@pytest.mark.parametrize("device", DEVICES)
def test_compute_step(benchmark, device, k):
    """Pure compute: forward + backward + penalty + SGD step on a fixed batch, no data handling."""
    cfg, net, pack, opt, x, y = setup(device, k)
    params = penalized(net)
    def step():
        logits = net(x)
        loss = torch.stack([F.cross_entropy(logits[:, i], y[:, i]) for i in range(k)])
        opt.zero_grad(set_to_none=True)
        (loss + penalty(params, pack["l1"], pack["l2"], k=k)).sum().backward()
        opt.step()
    record(benchmark, f"compute-{device}-{k}", step, device)


@pytest.mark.parametrize("k", [1, 20])
@pytest.mark.parametrize("device", DEVICES)
def test_training_step(benchmark, device, k, mnist):
    """Our whole step: slice batches from the resident uint8 data, rotate, normalise, then the compute step."""
    cfg, net, pack, opt, _, _ = setup(device, k)
    train_x, train_y = mnist[0].to(device), mnist[1].to(device)
    params = penalized(net)
    orders = [torch.randperm(60000, generator=g, device=device) for g in pack["data_gens"]]
    pos = [0]
    def step():
        idx = [o[pos[0]:pos[0] + 32] for o in orders]
        pos[0] = (pos[0] + 32) % (60000 - 32)
        x = torch.cat([train.prepare(train_x[i], cfg, g) for i, g in zip(idx, pack["data_gens"])], 1)
        y = torch.stack([train_y[i] for i in idx], 1).long()
        logits = net(x.contiguous(memory_format=torch.channels_last))
        loss = torch.stack([F.cross_entropy(logits[:, i], y[:, i]) for i in range(k)])
        opt.zero_grad(set_to_none=True)
        (loss + penalty(params, pack["l1"], pack["l2"], k=k)).sum().backward()
        opt.step()
    record(benchmark, f"train-{device}-{k}", step, device)


@pytest.mark.parametrize("device", DEVICES)
def test_classic_step(benchmark, device):
    """Baseline: torchvision MNIST + DataLoader (RandomRotation, ToTensor, Normalize), one model, batch 32."""
    import torchvision.transforms as T
    from torchvision.datasets import MNIST
    from model import Net
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
    record(benchmark, f"classic-{device}", step, device)


def test_zz_summary(benchmark, mnist):
    """Measure one real epoch of train.py's loop (and, on a GPU, the 20-model packed study), write the summary."""
    cfg = train.resolve(train.Config(variant="l1l2", l1=None, l2=None, device="cpu", epochs=1))
    split = [t for t in mnist]
    def one_epoch():
        net, pack = train.build_pack([(cfg, 0)], "cpu")
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, epochs=1, steps_per_epoch=STEPS_PER_EPOCH)
        train.train_one_epoch(net, opt, sched, pack, split[0], split[1], cfg, "bench epoch")
    benchmark.pedantic(one_epoch, rounds=1, iterations=1)
    epoch_s = benchmark.stats.stats.mean
    summary = {"cpu": {"epoch_s": round(epoch_s, 2),
                       "compute_epoch_s": round(MEANS["compute-cpu-1"] * STEPS_PER_EPOCH, 2),
                       "classic_epoch_s": round(MEANS["classic-cpu"] * STEPS_PER_EPOCH, 2),
                       "threads": torch.get_num_threads(), "steps_per_epoch": STEPS_PER_EPOCH,
                       "note": "compute and classic epochs = measured mean step time x steps per epoch"}}
    summary["cpu"]["ratio_to_compute"] = round(summary["cpu"]["epoch_s"] / summary["cpu"]["compute_epoch_s"], 3)
    summary["cpu"]["speedup_vs_classic"] = round(summary["cpu"]["classic_epoch_s"] / summary["cpu"]["epoch_s"], 2)
    if torch.cuda.is_available():
        summary["gpu"] = gpu_study(mnist)
    out = os.path.join(ROOT, "results", "bench")
    os.makedirs(out, exist_ok=True)
    train.write_json(os.path.join(out, "summary.json"), summary)


def gpu_study(mnist, variants=("none", "l1", "l2", "l1l2"), seeds=range(5), epochs=20):
    """4 variants x 5 seeds x 20 epochs packed into one graph on the GPU, timed end to end (incl. evaluation)."""
    cfgs = [train.resolve(train.Config(variant=v, l1=None, l2=None, device="cuda", epochs=epochs, packed=True))
            for v in variants]
    split = [t.to("cuda") for t in mnist]
    with tempfile.TemporaryDirectory() as tmp:  # the study's checkpoints are not kept: this only times it
        t0 = time.perf_counter()
        train.train_pack([(c, s) for c in cfgs for s in seeds], split, tmp, os.path.join(tmp, "state.pt"), resume=False)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    models = len(variants) * len(seeds)
    return {"name": torch.cuda.get_device_name(), "models": models, "epochs": epochs, "study_wall_s": round(wall, 1),
            "classic_study_s": round(MEANS["classic-cuda"] * STEPS_PER_EPOCH * epochs * models, 1),
            "note": "classic_study_s extrapolated from the measured classic step time x steps x epochs x models"}
