"""Device check: where a packed GPU step goes (issue 24's 'profile first'), for 20 and 30 models, default path."""
import json, os, sys, time
sys.path[:0] = [".", "tests"]
import torch
import data, loop, train
mnist = data.load_mnist("data")
out = {"torch": torch.__version__, "name": torch.cuda.get_device_name()}
for label, variants in (("20", "none,l1,l2,l1l2"), ("30", "none,l1,l2,l1l2,gbn,gbn_l1l2")):
    cfgs = train.parse_args(["--variant", variants, "--device", "cuda", "--packed", "--data", "data"])[0]
    members = [(c, s) for c in cfgs for s in range(5)]
    for mode in ("default", "nondeterministic"):
        if mode == "nondeterministic":
            torch.use_deterministic_algorithms(False); torch.backends.cudnn.deterministic = False
        net, pack = loop.build_pack(members, "cuda")
        cfg, steps = members[0][0], 50
        opt, sched = loop.optimizer(net, cfg, steps)
        x, y = mnist[0][:32 * steps].cuda(), mnist[1][:32 * steps].cuda()
        run = lambda: loop.train_one_epoch(net, opt, sched, pack, x, y, cfg, "p")
        run(); torch.cuda.synchronize()
        t0 = time.perf_counter(); run(); torch.cuda.synchronize()
        wall = 1000 * (time.perf_counter() - t0) / steps
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            run(); torch.cuda.synchronize()
        av = prof.key_averages()
        dev = sorted(((e.key, e.self_device_time_total / steps, e.count / steps) for e in av if e.self_device_time_total > 0),
                     key=lambda t: -t[1])
        busy = sum(t[1] for t in dev) / 1000
        launches = sum(e.count for e in av if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")) / steps
        out[f"{label} {mode}"] = {"step_ms": round(wall, 3), "gpu_busy_ms": round(busy, 3), "launches_per_step": launches,
                                  "top_kernels_us": [(k[:90], round(us, 1), round(c, 1)) for k, us, c in dev[:12]]}
        print(label, mode, json.dumps(out[f"{label} {mode}"])[:600], flush=True)
        torch.use_deterministic_algorithms(True); torch.backends.cudnn.deterministic = True
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "profile.json"), "w"), indent=1)
