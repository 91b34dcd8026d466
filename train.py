"""Train one variant of the 8,286-parameter MNIST CNN over one or more seeds; results go through results.py.

    python train.py --variant l1 --epochs 15 --seeds 0,1,2
    python train.py --variant l2 --l2 3e-4 --val --name l2-3e-4 --out results/val     # a validation run
    python train.py --variant l1 --resume          # continue a killed run exactly where it stopped
"""
import os
import signal
import sys

import program
from program import Stop

if __name__ == "__main__":
    # Ctrl-C or SIGTERM while torch imports: one line, not a traceback; main() installs its own handlers before
    # it touches a file, and there the saved epochs are named
    program.quiet_until_ready("train.py")

import errno  # noqa: E402
import glob  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import results  # noqa: E402
import rules  # noqa: E402
import state  # noqa: E402
import stats  # noqa: E402
import loop  # noqa: E402
from config import FULL, Config, parse_args  # noqa: E402
from loop import compile_problem, seed_everything  # noqa: E402


# -----------------------------------------------------------------------------
# the data a run trains on

def subsets_for(cfg, seeds, train_y):
    """{seed: sorted training indices} of a --train-subset, drawn from the first 50,000 training images (never a
    validation image); None without one (or for the whole set)."""
    if not cfg.train_subset or cfg.train_subset == FULL:
        return None
    return data.draw_subsets(train_y[:50000].cpu(), cfg.train_subset, seeds)


def in_repo(path, default):
    """The default folders are the repository's, wherever train.py is run from; other paths are as given."""
    return os.path.join(results.REPO, path) if path == default else path


def load_split(cfg, digests):
    """(train_x, train_y, eval_x, eval_y) uint8 on the device: the test set, or with --val the last 10k training
    images (the test set is then never read into the split)."""
    root = in_repo(cfg.data, Config.data)
    if data.missing_folder(cfg.data, Config.data):
        raise ValueError(data.missing_folder(cfg.data, Config.data))
    mnist = data.load_mnist(root, log=tqdm.write, digests=digests)
    end = cfg.train_limit or (50000 if cfg.val else None)  # --val trains on the first 50,000
    return [t.to(cfg.device) for t in (mnist[0][:end], mnist[1][:end], *data.eval_split(mnist, cfg.val, cfg.test_limit))]


# -----------------------------------------------------------------------------
# main: check everything that can fail, plan what to train, train pack by pack, record each as it finishes

def git_info():
    def git(*args):  # None, recorded as unknown, where there is no git or no repository (a copied tree)
        try:
            r = subprocess.run(["git", *args], cwd=results.REPO, capture_output=True, text=True)
        except OSError:
            return None
        return r.stdout.strip() if r.returncode == 0 else None
    dirty = git("status", "--porcelain", "--", ".", ":!results", ":!data")  # results/ and data/ change in a study
    return git("rev-parse", "HEAD"), (bool(dirty) if dirty is not None else None)


def provenance(cfg, argv, digests, fallback):
    commit, dirty = git_info()
    return {"command": " ".join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)]),
            "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__, "python": platform.python_version(),
            "device": cfg.device, "device_name": torch.cuda.get_device_name() if cfg.device == "cuda"
            else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(), "data_sha256": data.data_sha256(digests),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **({"compile_fallback": fallback} if fallback else {})}


def available_memory():
    """Bytes the kernel says a new process may use (MemAvailable), or None where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check(cfgs, args, out):
    """Everything that can fail before a model trains: the results files, the compiler, memory, the data.
    Returns ({name: finished result or None}, split, digests, compile fallback)."""
    cfg = cfgs[0]
    old = {}
    for c in cfgs:
        path = os.path.join(out, f"{c.name}.json")
        try:
            old[c.name] = results.load(path) if os.path.exists(path) else None
        except results.ResultsError as e:
            if not args.overwrite:
                raise
            tqdm.write(f"--overwrite: {e.args[0].split(';')[0]}; it is replaced when this run's first result is written")
            old[c.name] = None
    results.check_split(out, cfg.val)
    fallback = compile_problem(cfg)  # decided before the merge check: a run that fell back must compare as eager
    if fallback:
        tqdm.write(f"torch.compile does not work here ({fallback}); training eagerly (--no-compile to skip this)")
        for c in cfgs:
            c.compile = False
    for c in cfgs:
        path, r = os.path.join(out, f"{c.name}.json"), old[c.name]
        diff = rules.differences(r["config"], asdict(c)) if r else []
        if diff and args.overwrite:
            tqdm.write(f"--overwrite: {path} holds another config ({', '.join(diff)}); its seeds "
                       f"{[run['seed'] for run in r['runs']]} are dropped when this run's first result is written")
            old[c.name] = None
        elif r:
            results.check_merge(path, r, asdict(c))
    k = sum(len(c.seeds) for c in cfgs) if cfg.packed else 1
    need, avail = 1e9 + loop.model_memory(cfg, k), available_memory()  # ~1 GB: torch, the step, the data
    if avail and need > avail:
        raise ValueError(f"--packed: {k} models need ~{need / 1e9:.1f} GB (1 GB "
                         f"+ ~{loop.model_memory(cfg) / 1e6:.0f} MB per model at --eval-batch-size "
                         f"{cfg.eval_batch_size}, measured), more than the {avail / 1e9:.1f} GB available; pack fewer "
                         f"seeds or variants, or drop --packed")
    digests = {}
    return old, load_split(cfg, digests), digests, fallback


def plan(cfgs, args, out, old):
    """(runs kept per name, packs to train). Refuses to pass over an interrupted run's state silently."""
    runs = {c.name: list(old[c.name]["runs"]) if old[c.name] else [] for c in cfgs}
    done = {c.name: {r["seed"] for r in runs[c.name]} for c in cfgs}
    state.sweep_stale(out, runs)
    for c in cfgs:
        again = sorted(done[c.name] & set(c.seeds))
        if again and args.overwrite:
            kept = sorted(done[c.name] - set(c.seeds))
            tqdm.write(f"--overwrite: seeds {again} of {out}/{c.name}.json are trained again"
                       + (f"; seeds {kept} are kept" if kept else ""))
            done[c.name] -= set(c.seeds)
        elif again:
            tqdm.write(f"{c.name}: seeds {again} are already in {out}/{c.name}.json with this config; kept "
                       f"(--overwrite trains those seeds again and keeps the others)")
    todo = [(c, s) for c in cfgs for s in c.seeds if s not in done[c.name]]
    if cfgs[0].packed and todo:
        todo = unfinished_pack(out, cfgs, todo, runs)
    packs = [todo] if cfgs[0].packed and todo else [[m] for m in todo]
    states = [state.path(out, [(c.name, s) for c, s in p]) for p in packs]
    mine = {(c.name, s) for c, s in todo}
    for path in sorted(glob.glob(os.path.join(glob.escape(out), "state", "*.pt"))):
        members = state.members_of(path) or []
        if path not in states and mine & set(members):
            raise ValueError(f"{path} holds an interrupted run of {', '.join(f'{n} seed {s}' for n, s in members)}, "
                             f"which this command would train again: continue it with the command that saved it "
                             f"(the same seeds, --packed or not) and --resume, or delete the file to start afresh")
    if args.resume and todo and not any(os.path.exists(p) for p in states):
        raise ValueError(f"--resume: no saved state for {', '.join(runs)} seeds {[s for _, s in todo]} in {out}/state")
    for pack, path in zip(packs, states):
        if os.path.exists(path) and not args.resume:
            epochs = len(state.load(path, pack, cfgs[0].device)["histories"][0])
            raise ValueError(f"{path} holds {epochs} of {cfgs[0].epochs} epochs of an interrupted run of these seeds; "
                             f"continue it with --resume, or delete that file to start afresh")
    return runs, list(zip(packs, states))


def unfinished_pack(out, cfgs, todo, runs):
    """The whole pack of a packed command when a kill while its results files were being written left some of
    them written and the rest only in its state: resuming that state writes them all. Else todo."""
    whole = [(c, s) for c in cfgs for s in c.seeds]
    path = state.path(out, [(c.name, s) for c, s in whole])
    if todo == whole or not os.path.exists(path):
        return todo
    done = [(c.name, s) for c, s in whole if (c, s) not in todo]
    return whole if state.written(path, [(c.name, s) for c, s in whole], done, runs) else todo


def announce(cfg, packs, n_train):
    todo = [m for pack, _ in packs for m in pack]
    if not todo:
        tqdm.write("nothing to train: every seed asked for is already there")
        return
    # seconds per 60k-image model-epoch on the 2-core CPU machine, measured: with two threads solo or packed; with one
    # thread (two processes side by side, as make all runs) packed, ~23 s (the confirmatory runs), solo scaled alike
    packed = cfg.packed and len(todo) > 1
    per_epoch = lambda c: ((15 if packed else 20) if torch.get_num_threads() > 1 else (23 if packed else 30)) * \
        (1.5 if c.norm == "gbn" else 1)
    images = cfg.steps * cfg.batch_size if cfg.steps else n_train * cfg.epochs  # per model
    minutes = sum(per_epoch(c) for c, _ in todo) / 60 * images / 60000
    pace = ("on a GPU, per-step overheads set the pace: an H200 took ~1.1 s per model-epoch with 20 models packed"
            if cfg.device == "cuda" else f"expect ~{minutes:.{0 if minutes >= 10 else 1}f} min on 2 CPU cores "
            f"(~{per_epoch(cfg):.0f} s per model-epoch)")
    variants = ", ".join(dict.fromkeys(f"{c.name}: l1={c.l1:g} l2={c.l2:g} norm={c.norm}" for c, _ in todo))
    length = f"{cfg.steps} steps ({cfg.epochs} evaluations)" if cfg.steps else f"{cfg.epochs} epochs"
    tqdm.write(f"training {len(todo)} model(s) ({variants}) x {length} on {cfg.device}"
               f"{', packed' if cfg.packed else ''}, {n_train:,} train images; {pace}")


def record(out, pack, new, weights, runs):
    """Write each results file the pack touched (all its new seeds at once), then remove the pack's state."""
    for (c, seed), run in zip(pack, new):
        runs[c.name] = [r for r in runs[c.name] if r["seed"] != seed] + [run]
    newest = {c.name: (c, run) for (c, _), run in zip(pack, new)}
    for name, (c, run) in newest.items():
        runs[name].sort(key=lambda r: r["seed"])
        result = {"schema": results.SCHEMA, "variant": c.variant,
                  "config": asdict(c) | {"seeds": [r["seed"] for r in runs[name]]},
                  "env": run["env"], "runs": runs[name], "summary": stats.summarize(runs[name])}
        results.save(out, name, result, {s: w for (m, s), w in zip(pack, weights) if m.name == name})


def main(argv=None):
    cfgs, args, parser = parse_args(argv)
    cfg, out, t0 = cfgs[0], in_repo(cfgs[0].out, Config.out), time.perf_counter()
    seed_everything(0)  # the deterministic flags hold from here on, so the env records them truly
    sigterm = signal.signal(signal.SIGTERM, program.on_sigterm)
    progress = {"started": False, "written": [], "state": None}
    try:
        try:
            os.makedirs(os.path.join(out, "state"), exist_ok=True)
            with results.locked(out, [c.name for c in cfgs]):
                old, split, digests, fallback = check(cfgs, args, out)
                runs, packs = plan(cfgs, args, out, old)
                subsets = subsets_for(cfg, {s for pack, _ in packs for _, s in pack}, split[1])
                env = provenance(cfg, argv, digests, fallback)
                progress["started"] = True
                if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C is a KeyboardInterrupt
                announce(cfg, packs, len(next(iter(subsets.values()))) if subsets else len(split[0]))
                for pack, state_file in packs:
                    progress["state"] = state_file
                    new, weights = loop.train_pack(pack, split, state_file, args.resume, env,
                                                   subsets and [subsets[s] for _, s in pack])
                    with program.signals_held():  # a pack's results files and the removal of its state: all or none
                        record(out, pack, new, weights, runs)
                        if os.path.exists(state_file):  # only now, with its results written, does the run need no state
                            os.remove(state_file)
                        progress["written"] += [f"{c.name} seed {s}" for c, s in pack]
        except (ValueError, data.DataError, results.ResultsError) as e:
            raise Stop(2, e)
        except OSError as e:  # a full disk, a folder removed under us: finished epochs stay in state/
            if not progress["started"]:
                raise Stop(2, f"cannot write to --out {out}: {e.strerror}")
            fix = "free some space" if e.errno == errno.ENOSPC else "fix that"
            raise Stop(1, f"cannot write {e.filename or out}: {e.strerror}; {fix}, then run the same command with --resume")
        except KeyboardInterrupt as e:
            raise Stop(143 if isinstance(e, program.Terminated) else 130, interrupted(progress))
    except Stop as e:
        parser.exit(e.code, f"{parser.prog}: error: {e}\n")
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    failed = False
    for c in cfgs:
        s = stats.summarize(runs[c.name]) if runs[c.name] else None
        if s and s["final_test_acc_mean"] is not None:
            print(f"{c.name}: final {'val' if c.val else 'test'} acc {stats.describe(s)} -> {out}/{c.name}.json")
        if s and s["diverged"]:
            print(f"{c.name}: seeds {s['diverged']} diverged", file=sys.stderr)
            failed = True
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


def interrupted(progress):
    """What an interruption kept: written results, saved epochs, or nothing."""
    if not progress["started"]:
        return "interrupted while starting; nothing was written"
    said = f"interrupted; {', '.join(progress['written'])} written" if progress["written"] else "interrupted"
    if progress["state"] and os.path.exists(progress["state"]):
        return f"{said}; finished epochs are saved in {progress['state']}, continue with the same command and --resume"
    return f"{said}; no epoch of the run in progress had finished, so there is nothing to resume"


if __name__ == "__main__":
    sys.exit(main())
