"""Ghost BN's statistics in one reshape against the per-virtual-batch loop (docs/performance.md): whether the two
give the same weights after 15 steps, and their step time against BatchNorm's, interleaved in one process.

    .venv/bin/python bench/ghost_bn.py exact          # bit-identity, eager and compiled, bf16 and fp32
    .venv/bin/python bench/ghost_bn.py time 5 6       # K = 5 models a pack, 6 interleaved rounds of 25 steps

A measurement script, not part of `make bench`; the reshape is not in model.py (it changes the last bits).
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import config  # noqa: E402
import data  # noqa: E402
import loop  # noqa: E402
import model  # noqa: E402

LOOP = model.GhostBatchNorm2d.forward  # today's: one mean and variance per virtual batch


def reshaped(self, x):
    """The same function as LOOP: one (G, 8, C, H, W) view, one mean and one variance over (1, 3, 4)."""
    if not self.training or x.shape[0] <= self.virtual_batch or x.shape[0] % self.virtual_batch:
        return LOOP(self, x)
    x = x.to(self.running_mean.dtype)
    n, c, h, w = x.shape
    xg = x.view(n // self.virtual_batch, self.virtual_batch, c, h, w)
    mean, var = xg.mean(dim=(1, 3, 4)), xg.var(dim=(1, 3, 4), unbiased=False)  # (G, C) each
    with torch.no_grad():
        m = self.virtual_batch * h * w
        self.num_batches_tracked += 1
        self.running_mean.lerp_(mean.mean(0), self.momentum)
        self.running_var.lerp_(var.mean(0) * (m / max(m - 1, 1)), self.momentum)
    x_hat = (xg - mean[:, None, :, None, None]) * torch.rsqrt(var[:, None, :, None, None] + self.eps)
    return (x_hat * self.weight[:, None, None] + self.bias[:, None, None]).view(n, c, h, w)


def make(variant, k, compiled=True, extra=()):
    """(cfg, net, pack, opt, sched) of a pack of k seeds, as train.py builds it."""
    cfg = config.parse_args(["--variant", variant, "--device", "cpu", *([] if compiled else ["--no-compile"]),
                             *extra])[0][0]
    net, pack = loop.build_pack([(cfg, s) for s in range(k)], "cpu")
    return (cfg, net, pack, *loop.optimizer(net, cfg, 1000))


def steps(setup, forward, images, n, start=0):
    """n real-loop steps (gather, rotation, dropout bytes, compiled step, SGD) with Ghost BN's forward set."""
    cfg, net, pack, opt, sched = setup
    model.GhostBatchNorm2d.forward = forward
    train_x, train_y = images
    net.train()
    for i in range(n):
        idx = torch.arange(start + i * 32, start + i * 32 + 32)[:, None].expand(32, net.k) % len(train_x)
        x = data.augment(train_x[idx], cfg.normalize, cfg.rotate_deg, pack["data_gens"], model.DTYPES[cfg.dtype])
        total, *_ = pack["step"](net, x.contiguous(memory_format=loop.memory_format(cfg)), train_y[idx].long(),
                                 net.draw_noise(len(x)), pack["l1"], pack["l2"], cfg.precision == "bf16")
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()


def main(mode, k=5, rounds=6):
    mnist = data.load_mnist(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"),
                            log=lambda s: None)
    images = mnist[0][:32 * 400], mnist[1][:32 * 400]
    if mode == "exact":
        for compiled in (False, True):
            for extra in ((), ("--precision", "fp32")):
                weights = []
                for forward in (LOOP, reshaped):
                    s = make("gbn", 2, compiled, extra)
                    steps(s, forward, images, 15)
                    weights.append({key: v.clone() for key, v in s[1].state_dict().items()})
                same = all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
                diff = max((weights[0][key].double() - weights[1][key].double()).abs().max().item()
                           for key in weights[0] if weights[0][key].is_floating_point())
                print(f"compiled={compiled} {' '.join(extra) or 'bf16'}: bit-identical {same}, max |difference| "
                      f"{diff:.3g}", flush=True)
        return
    setups = {"bn": (make("none", k), LOOP), "gbn-loop": (make("gbn", k), LOOP),
              "gbn-reshape": (make("gbn", k), reshaped)}
    for _ in range(2):  # compile, and the recompiles that switching Ghost BN's forward in turn causes once
        for s, forward in setups.values():
            steps(s, forward, images, 5)
    times = {name: [] for name in setups}
    for r in range(rounds):
        for name, (s, forward) in setups.items():
            t0 = time.perf_counter()
            steps(s, forward, images, 25, 32 * 25 * r)
            times[name].append((time.perf_counter() - t0) / 25 / k * 1e3)
    for name, t in times.items():
        ratio = statistics.median(t) / statistics.median(times["bn"])
        print(f"K={k} {name}: median {statistics.median(t):.2f} ms per model-step, {ratio:.2f}x BatchNorm "
              f"({', '.join(f'{v:.2f}' for v in t)})")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
