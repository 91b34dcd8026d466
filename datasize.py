"""The data-size study: when do the penalties help? The four BatchNorm variants on class-balanced subsets of
1,000 to 60,000 training images, every size with the same number of optimizer steps, and λ chosen per size on
the validation split and committed before any test run of that size.

    python datasize.py lambdas 1000    # validation runs: none + each λ of the grid, 3 seeds each  (<results>/datasize/val/n1000/)
    python datasize.py choose 1000     # the rule, applied -> <results>/datasize/choice.json; commit it, then:
    python datasize.py test 1000       # none, l1, l2, l1l2 x 5 seeds, one pack               (<results>/datasize/n1000/)
    python datasize.py all             # every step of every size in order (make datasize); done work is skipped,
                                       # an interrupted run is continued, and it stops for each choice to be committed
Options: --results DIR (default: the repository's results/); --device and --data go to train.py. Nothing else
does: the study fixes the subset, the steps, the λ's, the seeds and where each run goes, and verify.py checks
every run against them.
"""
import program

if __name__ == "__main__":
    program.quiet_until_ready("datasize.py")  # Ctrl-C while torch imports: one line; train.py runs hold their own

import argparse
import os
import signal
import subprocess
import sys
import time

import choices
import results
import state
from program import Stop  # one line on stderr and an exit code

SIZES = [1000, 5000, 20000, 60000]            # 60000 = the whole training set
STEPS, POINTS = 9375, 15                      # 5 epochs of 60k, 300 of 1k; evaluated every 625 steps
GRID = {"l1": [1e-5, 1e-4, 1e-3, 1e-2],       # 4 λ's over 3 decades each; small data may want large ones
        "l2": [1e-4, 1e-3, 1e-2, 1e-1]}
VAL_SEEDS, TEST_SEEDS = [0, 1, 2], [0, 1, 2, 3, 4]
VARIANTS = ["none", "l1", "l2", "l1l2"]


def study_args(size, seeds):
    """What the study fixes for every run of one size (verify.py checks each run's config against it)."""
    return ["--train-subset", str(size), "--steps", str(STEPS), "--epochs", str(POINTS),
            "--seeds", ",".join(map(str, seeds))]


def spawn(args, env=None):
    """train.py as a program, as the study drivers start it (the tests run it in-process instead)."""
    return subprocess.Popen([sys.executable, os.path.join(results.REPO, "train.py"), *args], env=env)


def done(out, names, seeds):
    """Whether every (name, seed) of a pack is already in its results file."""
    have = {n: {r["seed"] for r in results.load(os.path.join(out, f"{n}.json"))["runs"]}
            if os.path.exists(os.path.join(out, f"{n}.json")) else set() for n in names}
    return all(set(seeds) <= have[n] for n in names)


def start(args, out, names, seeds, env):
    """train.py for one pack; where an earlier start was interrupted (its state is on disk), with --resume."""
    saved = state.path(out, [(name, seed) for name in names for seed in seeds])
    if os.path.exists(saved) and "--resume" not in args:
        print(f"continuing the interrupted run saved in {os.path.relpath(saved)}", flush=True)
        args = [*args, "--resume"]
    print("python train.py " + " ".join(args), flush=True)
    return spawn(args, env)


def run_packs(todo, processes=1, env=None):
    """Train each pack (train.py arguments, out, names, seeds) not yet done, `processes` train.py at a time, in
    order. Two packs that write one results file never run at once; a pack another process is training (its files'
    locks are held: another driver, or a train.py left running) takes a place, and is skipped once it is done.
    Ctrl-C reaches every train.py (each keeps its finished epochs) and the study stops with them; a SIGTERM here is
    passed on to them. Either signal also stops a driver that has no child running."""
    running, codes, stop, told, noted, started = [], [], [], set(), set(), 0
    files = lambda pack: {(pack[1], name) for name in pack[2]}
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, _: stop.append(signum))}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a handler, not SIG_IGN, which the children inherit
        old[signal.SIGINT] = signal.signal(signal.SIGINT, lambda signum, _: stop.append(signum))
    try:
        while True:
            for proc, pack in list(running):
                if proc.poll() is not None:
                    running.remove((proc, pack))
                    codes.append(proc.returncode)
            for proc in [proc for proc, _ in running if signal.SIGTERM in stop and proc not in told]:
                proc.send_signal(signal.SIGTERM)  # once per child: a second one would cut its clean-up short
                told.add(proc)
            while not stop and not any(codes):
                own = {f for _, pack in running for f in files(pack)}  # locked by this driver's own children
                elsewhere = [pk for pk in todo if any(results.busy(out, name) for out, name in files(pk) - own)]
                for out, name in {f for pk in elsewhere for f in files(pk) - own} - noted:
                    print(f"waiting: another process is writing {os.path.join(out, name)}.json", flush=True)
                    noted.add((out, name))
                # packs that write the same files are one process elsewhere (each file has one writer at a time)
                if len(running) + len({frozenset(files(pk)) for pk in elsewhere}) >= processes:
                    break
                todo = [pk for pk in todo if pk in elsewhere or not done(*pk[1:])]
                taken = [other for _, other in running] + elsewhere
                free = [pk for pk in todo if not any(files(pk) & files(other) for other in taken)]
                if not free:
                    break
                todo.remove(free[0])
                running.append((start(*free[0], env), free[0]))
                started += 1
            if not running and (stop or any(codes) or not todo):
                break
            for _ in range(1 if running else 60):  # with nothing running, only packs another process trains are left
                if not stop:
                    time.sleep(0.5)
    finally:
        for proc, _ in running:  # only where an error ends the loop: no train.py outlives its driver
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if signal.SIGTERM in stop:
        raise Stop(143, "terminated (SIGTERM, passed on to train.py); what finished is kept")
    bad = next((c for c in codes if c), 0)
    if bad:  # a negative code: a signal train.py could not catch (kill -9): name it, and exit as a shell would
        why = f"was killed by {signal.Signals(-bad).name}" if bad < 0 else f"exited {bad}"
        raise Stop(128 - bad if bad < 0 else bad, f"train.py {why}; the study stops here (what finished is kept; "
                                                  f"the same command continues)")
    if stop:
        raise Stop(130, "interrupted; what finished is kept (the same command continues)")
    if not started:
        print("nothing to train: every pack is already done", flush=True)


def lambda_args(size):
    """[(name, train.py arguments without --out)] of one size's validation runs: none first, then one per λ."""
    runs = [("none", ["--variant", "none", "--val", *study_args(size, VAL_SEEDS), "--packed"])]
    for penalty, grid in GRID.items():
        runs += [(f"{penalty}-{lam:g}", ["--variant", penalty, f"--{penalty}", f"{lam:g}", "--val",
                                         *study_args(size, VAL_SEEDS), "--packed", "--name", f"{penalty}-{lam:g}"])
                 for lam in grid]
    return runs


def search_lambdas(folder, size, extra=()):
    out = os.path.join(folder, "val", f"n{size}")
    run_packs([([*args, "--out", out, *extra], out, [name], VAL_SEEDS) for name, args in lambda_args(size)])


def val_paths(folder, size):
    """The validation runs one size's choice is made from: none first, then one file per λ of the grid."""
    return [os.path.join(folder, "val", f"n{size}", f"{name}.json") for name, _ in lambda_args(size)]


def choose(folder, size):
    entry = choices.write_choice(folder, size, {path: results.load(path) for path in val_paths(folder, size)}, GRID)
    print(f"n{size}: " + ", ".join(f"{p} = {lam:g}" for p, lam in entry["chosen"].items())
          + f" ({entry['rule']}) -> {os.path.relpath(os.path.join(folder, 'choice.json'))}")


def choice_committed(folder, size):
    """Whether git's HEAD holds this size's entry of choice.json as it is now; None where there is no git."""
    head = choices.committed(os.path.join(folder, "choice.json"))
    if not head:
        return head
    try:
        return head["sizes"].get(str(size)) == choices.load_choice(folder)["sizes"][str(size)]
    except (KeyError, TypeError, AttributeError):  # a damaged file at HEAD: not committed
        return False


def test_args(choice, size):
    """train.py's arguments for one size's test pack, from its choice.json entry (without --out)."""
    return ["--variant", ",".join(VARIANTS), "--l1", f"{choice['chosen']['l1']:g}", "--l2",
            f"{choice['chosen']['l2']:g}", *study_args(size, TEST_SEEDS), "--packed"]


def run_tests(folder, size, extra=()):
    choice = (choices.load_choice(folder) or {"sizes": {}})["sizes"].get(str(size))
    if not choice:
        raise Stop(2, f"no λ chosen for n{size} in {folder}/choice.json; run `python datasize.py lambdas {size}` and "
                      f"`python datasize.py choose {size}` first")
    committed = choice_committed(folder, size)
    if committed is False:
        raise Stop(2, f"the λ choice for n{size} is not committed: the protocol commits "
                      f"{os.path.relpath(os.path.join(folder, 'choice.json'))} before that size's test runs; commit "
                      f"it, then run this again")
    if committed is None:
        print(f"note: no git here, so nothing shows that the λ choice for n{size} came before its test runs")
    out = os.path.join(folder, f"n{size}")
    run_packs([([*test_args(choice, size), "--out", out, *extra], out, VARIANTS, TEST_SEEDS)])


def run_all(folder, extra):
    for size in SIZES:
        have = choices.load_choice(folder)
        if not have or str(size) not in have["sizes"]:
            search_lambdas(folder, size, extra)
            choose(folder, size)
        run_tests(folder, size, extra)


# -----------------------------------------------------------------------------
# command line: only what cannot change the numbers reaches train.py

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (usage: python datasize.py {{lambdas,choose,test}} SIZE | all "
                     f"[--results DIR] [--device D] [--data DIR]; sizes {SIZES})\n")


def parse_args(argv):
    p = Parser(prog="datasize.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["lambdas", "choose", "test", "all"], help="what to run")
    p.add_argument("size", nargs="?", type=int, help=f"training images, one of {SIZES} (not with all)")
    p.add_argument("--results", default=os.path.join(results.REPO, "results"),
                   help="results folder; the study lives in its datasize/ (default: the repository's results/)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="passed to train.py (default: its auto)")
    p.add_argument("--data", help="MNIST folder, passed to train.py (its files are checked against their hashes)")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        p.exit(2, f"datasize.py: error: {unknown[0]} would change what the study fixes (subset, steps, λ's, seeds, "
                  f"where runs go); only --device and --data are passed to train.py\n")
    if (args.step == "all") != (args.size is None):
        p.error(f"{args.step} takes no SIZE" if args.step == "all" else f"{args.step} needs a SIZE")
    if args.size is not None and args.size not in SIZES:
        p.error(f"size {args.size} is not one of the study's sizes {SIZES}")
    extra = [*(["--device", args.device] if args.device else []), *(["--data", args.data] if args.data else [])]
    return args, os.path.join(args.results, "datasize"), extra


def main(argv):
    args, folder, extra = parse_args(argv)
    program.ready()  # Ctrl-C is a KeyboardInterrupt again (ignored while a train.py run holds it)
    try:
        if args.step == "all":
            run_all(folder, extra)
        elif args.step == "choose":
            choose(folder, args.size)
        else:
            {"lambdas": search_lambdas, "test": run_tests}[args.step](folder, args.size, extra)
    except results.ResultsError as e:
        sys.exit(f"datasize.py: error: {e}")
    except Stop as e:
        print(f"datasize.py: {e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("datasize.py: interrupted; what finished is kept", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main(sys.argv[1:])
