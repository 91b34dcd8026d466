"""The data-size study: when do the penalties help? The four BatchNorm variants on class-balanced subsets of
1,000 to 60,000 training images, every size with the same number of optimizer steps, and λ chosen per size on
the validation split before any test run of that size.

    python datasize.py lambdas 1000    # validation runs: none + each λ of the grid, 3 seeds each  (results/datasize/val/n1000/)
    python datasize.py choose 1000     # the rule, applied -> results/datasize/choice.json; commit it before:
    python datasize.py test 1000       # none, l1, l2, l1l2 x 5 seeds, one pack              (results/datasize/n1000/)
    python datasize.py all             # every step of every size in order (make datasize); done work is skipped
"""
import json
import os
import subprocess
import sys

import loop
import results

SIZES = [1000, 5000, 20000, 60000]            # 60000 = the whole training set
STEPS, POINTS = 9375, 15                      # 5 epochs of 60k, 300 of 1k; evaluated every 625 steps
GRID = {"l1": [1e-5, 1e-4, 1e-3, 1e-2],       # 4 λ's over 3 decades each; small data may want large ones
        "l2": [1e-4, 1e-3, 1e-2, 1e-1]}
VAL_SEEDS, TEST_SEEDS = "0,1,2", "0,1,2,3,4"
FOLDER = os.path.join(results.REPO, "results", "datasize")


def common(size, seeds):
    return ["--train-subset", str(size), "--steps", str(STEPS), "--epochs", str(POINTS), "--seeds", seeds]


def run(args, out, names, seeds):
    """train.py as a program; where an earlier start was interrupted (its state is on disk) it continues that run
    with --resume, so `make datasize` picks up a study spread over sessions. A failure stops the study."""
    state = loop.state_path(out, [(name, int(s)) for name in names for s in seeds.split(",")])
    if os.path.exists(state) and "--resume" not in args:
        print(f"continuing the interrupted run saved in {os.path.relpath(state)}", flush=True)
        args = [*args, "--resume"]
    print("python train.py " + " ".join(args), flush=True)
    code = subprocess.run([sys.executable, os.path.join(results.REPO, "train.py"), *args]).returncode
    if code:
        sys.exit(f"datasize.py: train.py exited {code}; the study stops here")


def lambdas(size, extra=()):
    out = os.path.join(FOLDER, "val", f"n{size}")
    run(["--variant", "none", "--val", *common(size, VAL_SEEDS), "--packed", "--out", out, *extra], out, ["none"],
        VAL_SEEDS)
    for penalty, grid in GRID.items():
        for lam in grid:
            name = f"{penalty}-{lam:g}"
            run(["--variant", penalty, f"--{penalty}", f"{lam:g}", "--val", *common(size, VAL_SEEDS), "--packed",
                 "--name", name, "--out", out, *extra], out, [name], VAL_SEEDS)


def choose(size):
    folder = os.path.join(FOLDER, "val", f"n{size}")
    runs = {os.path.join(folder, f"{name}.json"): None for name in
            ["none", *(f"{p}-{lam:g}" for p, grid in GRID.items() for lam in grid)]}
    entry = results.write_choice(FOLDER, size, {path: results.load(path) for path in runs}, GRID)
    print(f"n{size}: " + ", ".join(f"{p} = {lam:g}" for p, lam in entry["chosen"].items())
          + f" ({entry['rule']}) -> {os.path.relpath(os.path.join(FOLDER, 'choice.json'))}")


def committed(size):
    """Whether HEAD holds this size's entry of choice.json as it is now (the protocol commits it first)."""
    path = os.path.relpath(os.path.join(FOLDER, "choice.json"), results.REPO)
    r = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=results.REPO, capture_output=True, text=True)
    if r.returncode:
        return False
    return json.loads(r.stdout).get("sizes", {}).get(str(size)) == results.load_choice(FOLDER)["sizes"][str(size)]


def test(size, extra=()):
    choice = (results.load_choice(FOLDER) or {"sizes": {}})["sizes"].get(str(size))
    if not choice:
        sys.exit(f"datasize.py: no λ chosen for n{size} in {FOLDER}/choice.json; run `python datasize.py lambdas "
                 f"{size}` and `python datasize.py choose {size}` first")
    if not committed(size):
        print(f"note: the λ choice for n{size} is not committed; the study's protocol commits it before the test runs")
    out, variants = os.path.join(FOLDER, f"n{size}"), ["none", "l1", "l2", "l1l2"]
    run(["--variant", ",".join(variants), "--l1", f"{choice['chosen']['l1']:g}", "--l2", f"{choice['chosen']['l2']:g}",
         *common(size, TEST_SEEDS), "--packed", "--out", out, *extra], out, variants, TEST_SEEDS)


def main(argv):
    usage = f"usage: python datasize.py {{lambdas,choose,test}} SIZE [train.py flags] | all  (sizes: {SIZES})"
    if not argv or argv[0] not in ("lambdas", "choose", "test", "all") or \
            (argv[0] != "all" and (len(argv) < 2 or not argv[1].isdigit() or int(argv[1]) not in SIZES)):
        sys.exit(usage)
    try:
        if argv[0] == "all":
            for size in SIZES:
                have = results.load_choice(FOLDER)
                if not have or str(size) not in have["sizes"]:
                    lambdas(size, argv[1:])
                    choose(size)
                test(size, argv[1:])
        elif argv[0] == "choose":
            choose(int(argv[1]))
        else:
            {"lambdas": lambdas, "test": test}[argv[0]](int(argv[1]), argv[2:])
    except results.ResultsError as e:
        sys.exit(f"datasize.py: error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
