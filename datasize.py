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

import choices
import results
import state
from program import Stop  # one line on stderr and an exit code

SIZES = [1000, 5000, 20000, 60000]            # 60000 = the whole training set
STEPS, POINTS = 9375, 15                      # 5 epochs of 60k, 300 of 1k; evaluated every 625 steps
GRID = {"l1": [1e-5, 1e-4, 1e-3, 1e-2],       # 4 λ's over 3 decades each; small data may want large ones
        "l2": [1e-4, 1e-3, 1e-2, 1e-1]}
VAL_SEEDS, TEST_SEEDS = "0,1,2", "0,1,2,3,4"
VARIANTS = ["none", "l1", "l2", "l1l2"]


def study_args(size, seeds):
    """What the study fixes for every run of one size (verify.py checks each run's config against it)."""
    return ["--train-subset", str(size), "--steps", str(STEPS), "--epochs", str(POINTS), "--seeds", seeds]


def spawn(args, env=None):
    """train.py as a program, as the study drivers start it (the tests run it in-process instead)."""
    return subprocess.Popen([sys.executable, os.path.join(results.REPO, "train.py"), *args], env=env)


def run_train(args, out, names, seeds):
    """train.py as a program. Where an earlier start was interrupted (its pack's state is on disk) it continues
    that run with --resume; Ctrl-C goes to train.py, which keeps what finished, and the study stops with it; a
    SIGTERM to this process is passed on to train.py, which does the same."""
    saved = state.path(out, [(name, int(s)) for name in names for s in seeds.split(",")])
    if os.path.exists(saved) and "--resume" not in args:
        print(f"continuing the interrupted run saved in {os.path.relpath(saved)}", flush=True)
        args = [*args, "--resume"]
    print("python train.py " + " ".join(args), flush=True)
    proc = spawn(args)
    termed = []
    old = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),  # after the spawn: train.py keeps its own Ctrl-C
           signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: termed.append(proc.send_signal(signal.SIGTERM)))}
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if code < 0:  # a signal train.py could not catch (kill -9): name it, and exit as a shell would
        raise Stop(128 - code, f"train.py was killed by {signal.Signals(-code).name}; the study stops here (what "
                               f"finished is kept; the same command continues an interrupted run)")
    if termed:
        raise Stop(143, "terminated (SIGTERM, passed on to train.py); what finished is kept")
    if code:
        raise Stop(code, f"train.py exited {code}; the study stops here (what finished is kept)")


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
    for name, args in lambda_args(size):
        run_train([*args, "--out", out, *extra], out, [name], VAL_SEEDS)


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
    run_train([*test_args(choice, size), "--out", out, *extra], out, VARIANTS, TEST_SEEDS)


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
