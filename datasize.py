"""The data-size study: when do the penalties help? The four BatchNorm variants on class-balanced subsets of
1,000 to 60,000 training images, every size with the same number of optimizer steps, and λ chosen per size on
the validation split and committed before any test run of that size.

    python datasize.py lambdas 1000    # validation runs: none + each λ of the grid, 3 seeds each  (<results>/datasize/val/n1000/)
    python datasize.py choose 1000     # the rule, applied -> <results>/datasize/choice.json; commit it, then:
    python datasize.py test 1000       # none, l1, l2, l1l2 x 5 seeds, one pack               (<results>/datasize/n1000/)
    python datasize.py all             # every step of every size in order (make datasize); done work is skipped,
                                       # an interrupted run is continued, and it stops for each choice to be committed
Options: --results DIR (default: the repository's results/); any other flag goes to train.py.
"""
import program

if __name__ == "__main__":
    program.quiet_until_ready("datasize.py")  # Ctrl-C while torch imports: one line; train.py runs hold their own

import json
import os
import signal
import subprocess
import sys

import loop
import results
from program import Stop  # one line on stderr and an exit code

SIZES = [1000, 5000, 20000, 60000]            # 60000 = the whole training set
STEPS, POINTS = 9375, 15                      # 5 epochs of 60k, 300 of 1k; evaluated every 625 steps
GRID = {"l1": [1e-5, 1e-4, 1e-3, 1e-2],       # 4 λ's over 3 decades each; small data may want large ones
        "l2": [1e-4, 1e-3, 1e-2, 1e-1]}
VAL_SEEDS, TEST_SEEDS = "0,1,2", "0,1,2,3,4"
VARIANTS = ["none", "l1", "l2", "l1l2"]
FOLDER = os.path.join(results.REPO, "results", "datasize")


def study_args(size, seeds):
    return ["--train-subset", str(size), "--steps", str(STEPS), "--epochs", str(POINTS), "--seeds", seeds]


def run_train(args, out, names, seeds):
    """train.py as a program. Where an earlier start was interrupted (its pack's state is on disk) it continues
    that run with --resume; Ctrl-C goes to train.py, which keeps what finished, and the study stops with it."""
    state = loop.state_path(out, [(name, int(s)) for name in names for s in seeds.split(",")])
    if os.path.exists(state) and "--resume" not in args:
        print(f"continuing the interrupted run saved in {os.path.relpath(state)}", flush=True)
        args = [*args, "--resume"]
    print("python train.py " + " ".join(args), flush=True)
    proc = subprocess.Popen([sys.executable, os.path.join(results.REPO, "train.py"), *args])
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # after the spawn: train.py keeps its own Ctrl-C
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, old)
    if code:
        raise Stop(code, f"train.py exited {code}; the study stops here (what finished is kept)")


def search_lambdas(size, extra=()):
    out = os.path.join(FOLDER, "val", f"n{size}")
    run_train(["--variant", "none", "--val", *study_args(size, VAL_SEEDS), "--packed", "--out", out, *extra], out,
              ["none"], VAL_SEEDS)
    for penalty, grid in GRID.items():
        for lam in grid:
            name = f"{penalty}-{lam:g}"
            run_train(["--variant", penalty, f"--{penalty}", f"{lam:g}", "--val", *study_args(size, VAL_SEEDS),
                       "--packed", "--name", name, "--out", out, *extra], out, [name], VAL_SEEDS)


def choose(size):
    folder = os.path.join(FOLDER, "val", f"n{size}")
    paths = [os.path.join(folder, f"{name}.json") for name in
             ["none", *(f"{p}-{lam:g}" for p, grid in GRID.items() for lam in grid)]]
    entry = results.write_choice(FOLDER, size, {path: results.load(path) for path in paths}, GRID)
    print(f"n{size}: " + ", ".join(f"{p} = {lam:g}" for p, lam in entry["chosen"].items())
          + f" ({entry['rule']}) -> {os.path.relpath(os.path.join(FOLDER, 'choice.json'))}")


def choice_committed(size):
    """Whether git's HEAD holds this size's entry of choice.json as it is now; None where there is no git."""
    path = os.path.relpath(os.path.join(FOLDER, "choice.json"), results.REPO)
    try:
        r = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=results.REPO, capture_output=True, text=True)
    except OSError:  # no git installed
        return None
    if r.returncode:  # no repository here, or a results folder outside it: nothing can show the order
        return None if "not a git repository" in r.stderr or "outside repository" in r.stderr else False
    try:
        return json.loads(r.stdout)["sizes"].get(str(size)) == results.load_choice(FOLDER)["sizes"][str(size)]
    except (ValueError, KeyError, TypeError, AttributeError):  # a damaged file at HEAD: not committed
        return False


def run_tests(size, extra=()):
    choice = (results.load_choice(FOLDER) or {"sizes": {}})["sizes"].get(str(size))
    if not choice:
        raise Stop(2, f"no λ chosen for n{size} in {FOLDER}/choice.json; run `python datasize.py lambdas {size}` and "
                      f"`python datasize.py choose {size}` first")
    committed = choice_committed(size)
    if committed is False:
        raise Stop(2, f"the λ choice for n{size} is not committed: the protocol commits "
                      f"{os.path.relpath(os.path.join(FOLDER, 'choice.json'))} before that size's test runs; commit "
                      f"it, then run this again")
    if committed is None:
        print(f"note: no git here, so nothing shows that the λ choice for n{size} came before its test runs")
    out = os.path.join(FOLDER, f"n{size}")
    run_train(["--variant", ",".join(VARIANTS), "--l1", f"{choice['chosen']['l1']:g}", "--l2",
               f"{choice['chosen']['l2']:g}", *study_args(size, TEST_SEEDS), "--packed", "--out", out, *extra],
              out, VARIANTS, TEST_SEEDS)


def run_all(extra):
    for size in SIZES:
        have = results.load_choice(FOLDER)
        if not have or str(size) not in have["sizes"]:
            search_lambdas(size, extra)
            choose(size)
        run_tests(size, extra)


def main(argv):
    global FOLDER
    usage = f"usage: python datasize.py {{lambdas,choose,test}} SIZE | all  [--results DIR] [train.py flags]  (sizes: {SIZES})"
    if "--results" in argv:
        i = argv.index("--results")
        if i + 1 == len(argv):
            sys.exit(usage)
        FOLDER, argv = os.path.join(argv[i + 1], "datasize"), argv[:i] + argv[i + 2:]
    if not argv or argv[0] not in ("lambdas", "choose", "test", "all") or \
            (argv[0] != "all" and (len(argv) < 2 or not argv[1].isdigit() or int(argv[1]) not in SIZES)):
        sys.exit(usage)
    program.ready()  # Ctrl-C is a KeyboardInterrupt again (ignored while a train.py run holds it)
    try:
        if argv[0] == "all":
            run_all(argv[1:])
        elif argv[0] == "choose":
            choose(int(argv[1]))
        else:
            {"lambdas": search_lambdas, "test": run_tests}[argv[0]](int(argv[1]), argv[2:])
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
