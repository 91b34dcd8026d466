"""What verify.py checks besides re-evaluating checkpoints: every file a figure or REPORT.md reads, against the
runs it describes. Each check returns its problems as lines that name the file (empty: everything agrees).

- choice.json (the data-size study, datasize.py): each size's entry equals what rules.datasize_choice gives on
  that size's validation runs (val/n<N>/), and every run in val/n<N>/ and n<N>/ has the config datasize.py
  gives it: the subset N, the steps, the grid's or the chosen λ's, the seeds, the split;
- recipe.json: equals what rules.recipe_choice gives on its candidate runs (recipe/) and λ runs (recipe/lambda/);
- the confirmatory study's plan.json: equals what confirm.py writes from rules.py, and every run in its folders
  has the config the plan gives it, on seeds of the plan;
- the repository's results/: every variant's file is what `make <variant>` trains (the table's λ's, the recipe);
- every run: its λ's agree with its weights (penalty_problem).
"""
import json
import os
import re
from dataclasses import asdict

import choices
import config
import confirm
import datasize
import regularizers
import results
import rules

# the penalty of a run's final weights against the mean penalty of its last epoch, which the weights end: over
# the 209 committed runs with a penalty the ratio recorded / recomputed lies in [0.999, 1.474] (the epoch mean
# is the larger, the more so the stronger the penalty); a λ relabelled 2x moves it outside either bound
PENALTY_RATIO = (0.8, 1.6)
NOT_FIXED = {"compile"}  # train.py falls back to eager where no compiler works, and records it: the same study
ANY = "any"  # config_problems: a folder whose files may hold any seeds


def penalty_problem(cfg, run, weights):
    """None if the λ's of cfg, applied to the final conv weights, give about the penalty recorded for the last
    epoch; else what differs. Nothing ties a hand-edited λ to the weights but this."""
    mask = regularizers.layer_mask(rules.with_defaults(cfg)["penalized"])  # conv1..conv9, or the classifier alone
    convs = [w.double() for w, penalised in zip((w for w in weights.values() if w.dim() == 4), mask) if penalised]
    l1, l2 = cfg["l1"], cfg["l2"]
    mine = l1 * sum(w.abs().sum().item() for w in convs) + l2 * sum(w.pow(2).sum().item() for w in convs)
    recorded = run["epochs"][-1]["penalty"]
    if (mine == 0) != (recorded == 0) or (mine and not PENALTY_RATIO[0] <= recorded / mine <= PENALTY_RATIO[1]):
        return (f"penalty: l1 {l1:g}, l2 {l2:g} give {mine:.4g} on these weights, the last epoch recorded "
                f"{recorded:.4g} (ratio outside {PENALTY_RATIO}): the config's λ is not the one that trained them")
    return None


def expected_configs(args):
    """{name: config} that train.py writes for these arguments (as datasize.py passes them)."""
    cfgs, _, _ = config.parse_args(args)
    return {c.name: asdict(c) for c in cfgs}


def config_problems(folder, expected, trainer, seeds=None):
    """Every results file in folder must be one of `expected` ({name: config}) with that config, on exactly its
    seeds or, with `seeds` (a set, or ANY), on seeds within it; trainer: what trains them ("{name}": the file's)."""
    problems = []
    for path in results.result_paths(folder):
        name, cfg = os.path.basename(path)[:-5], results.read_json(path, "restore it")["config"]
        if name not in expected:
            problems.append(f"{path}: not a run of the study ({trainer.format(name='all')} writes {', '.join(expected)})")
            continue
        diff = rules.differences(expected[name], cfg, ignore=NOT_FIXED)
        if seeds is None and cfg["seeds"] != expected[name]["seeds"]:
            diff.append(f"seeds ({expected[name]['seeds']} -> {cfg['seeds']})")
        elif seeds not in (None, ANY) and set(cfg["seeds"]) - set(seeds):
            diff.append(f"seeds {sorted(set(cfg['seeds']) - set(seeds))} outside {trainer}")
        problems += [f"{path}: not what {trainer.format(name=name)} trains ({', '.join(diff)})"] if diff else []
    return problems


def sizes_in(folder):
    """The N of every n<N>/ below folder that holds results files."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return {int(n[1:]) for n in names if re.fullmatch(r"n[0-9]+", n) and results.result_paths(os.path.join(folder, n))}


def check_datasize(folder):
    """choice.json in folder against the validation runs it was chosen from and the test runs that used it."""
    path, problems = os.path.join(folder, "choice.json"), []
    entries = (choices.load_choice(folder) or {"sizes": {}})["sizes"]
    tests, vals = sizes_in(folder), sizes_in(os.path.join(folder, "val"))
    for size in sorted(tests | vals | {int(s) for s in entries if s.isdigit()}):
        if size not in datasize.SIZES:
            problems.append(f"{folder}: n{size} is not a size of the study {datasize.SIZES}")
            continue
        val = os.path.join(folder, "val", f"n{size}")
        problems += config_problems(val, {n: c for name, args in datasize.lambda_args(size)
                                          for n, c in expected_configs(args).items()}, "datasize.py")
        entry = entries.get(str(size))
        if entry is None:
            problems += [f"{folder}/n{size}: test runs with no λ chosen for n{size} in {path}"] if size in tests else []
            continue
        missing = [p for p in datasize.val_paths(folder, size) if not os.path.exists(p)]
        if missing:
            problems.append(f"{path}: n{size} was chosen from runs that are not there ({missing[0]})")
            continue
        try:
            again = rules.datasize_choice({p: results.load(p) for p in datasize.val_paths(folder, size)}, datasize.GRID)
        except ValueError as e:
            problems.append(f"{path}: n{size}'s validation runs give no choice ({e})")
            continue
        again = json.loads(json.dumps(again))  # as the file holds it
        if again != entry:
            keys = sorted(k for k in set(again) | set(entry) if again.get(k) != entry.get(k))
            problems.append(f"{path}: n{size} differs from what its validation runs give in {', '.join(keys)} "
                            f"(they give {again['chosen']}, the file says {entry.get('chosen')})")
        problems += config_problems(os.path.join(folder, f"n{size}"), expected_configs(datasize.test_args(entry, size)),
                                    "datasize.py")
    return problems


def check_recipe(folder):
    """folder/recipe.json against its candidates (folder/recipe/<name>.json) and λ runs (folder/recipe/lambda/)."""
    path, have = os.path.join(folder, "recipe.json"), choices.load_recipe(folder)
    runs = os.path.join(folder, "recipe")
    names = [c["name"] for c in have["candidates"]]
    missing = [n for n in names if not os.path.exists(os.path.join(runs, f"{n}.json"))]
    if missing:
        return [f"{path}: its candidate {missing[0]} has no run in {runs}"]
    try:
        again = choices.recipe_from(runs, names)
    except results.ResultsError as e:
        return [f"{path}: its runs give no recipe ({e})"]
    keys = sorted(k for k in set(again) | set(have) if again.get(k) != have.get(k) and k != "schema")  # the writer's
    if keys:
        return [f"{path}: differs from what its runs in {runs} give in {', '.join(keys)} (they give "
                f"{again['chosen']} and λ's {again.get('lambdas')}, the file says {have['chosen']} and {have.get('lambdas')})"]
    return []


def check_confirm(root):
    """root/confirm/plan.json against what confirm.py writes from rules.py, and every run in the plan's folders
    against the config the plan gives it (any of the plan's seeds)."""
    path = os.path.join(root, "confirm", "plan.json")
    if not os.path.exists(path):
        return [f"{root}/confirm: runs without a plan.json"] if results.result_folders(os.path.join(root, "confirm")) else []
    have, problems = results.read_json(path, "restore it (git checkout)"), []
    try:
        want = json.loads(json.dumps(confirm.plan(root)))
    except results.ResultsError as e:
        return [f"{path}: {e}"]
    if have != want:
        keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        return [f"{path}: differs from what confirm.py writes from rules.py in {', '.join(keys)}"]
    for study in ("main", "mechanism"):
        expected = {n: c for args, _, _, _ in confirm.packs(study, have, root) for n, c in expected_configs(args).items()}
        problems += config_problems(os.path.join(root, have[study]["folder"]), expected, "the plan", have[study]["seeds"])
    return problems


STUDY_EPOCHS = 15  # the main study: `make all`'s variants at the Makefile's EPOCHS, packed


def check_study(root):
    """The repository's results/: each <variant>.json there is the main study's run of that variant, with the
    variant table's λ's and Config's recipe (what `make all` trains), on any seeds."""
    expected = {v: expected_configs(["--variant", v, "--epochs", str(STUDY_EPOCHS), "--packed"])[v]
                for v in (rules.BASE, *rules.FAMILIES["main"].variants)}
    return config_problems(root, expected, "`make {name}`", ANY)


def check_tree(root):
    """The problems of every choice.json and recipe.json under root, and of data-size runs without a choice."""
    main = os.path.realpath(root) == os.path.realpath(os.path.join(results.REPO, "results"))
    problems = check_study(root) if main else []
    for folder, files in results.folders(root):
        if "choice.json" in files or os.path.basename(folder) == "datasize":
            problems += check_datasize(folder)
        if "recipe.json" in files:
            problems += check_recipe(folder)
        if os.path.basename(folder) == "confirm":
            problems += check_confirm(os.path.dirname(folder))
    return problems
