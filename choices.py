"""The choices made on the validation split, as files, and the proof that each came before the runs that use it:

    <folder>/recipe.json            the training recipe and the main study's λ's (make recipe / make lambdas)
    <folder>/datasize/choice.json   the data-size study's λ's per size (datasize.py), each entry written once
rules.py decides, this module checks and writes them through results.py's atomic writer; committed() reads what
git's HEAD holds, so datasize.py and confirm.py can refuse to run tests before their choice or plan is committed.

    python choices.py recipe results/recipe base nodrop rot10 constmom   # apply the rules -> results/recipe.json
                                                                          # (--overwrite: replace another choice)
"""
import argparse
import json
import os
import subprocess

import results
import rules


def load_recipe(folder):
    """folder/recipe.json, checked; None where there is none."""
    path = os.path.join(folder, "recipe.json")
    if not os.path.exists(path):
        return None
    r = results.read_json(path, "run `make recipe` again or move it away")
    if not isinstance(r, dict) or not r.get("candidates") or "chosen" not in r:
        raise results.ResultsError(f"{path}: no candidates or no chosen recipe; run `make recipe` again or move it away")
    try:
        rules.check_recipe(r)
    except ValueError as e:
        raise results.ResultsError(f"{path}: {e}; run `make recipe` again or move it away")
    return r


def recipe_from(folder, order):
    """recipe.json's content, as the file holds it, from rules.recipe_choice on the candidate runs
    (folder/<name>.json, names in `order`, simplest first) and the λ runs (folder/lambda/*.json)."""
    candidates = [(name, os.path.join(folder, f"{name}.json"), results.load(os.path.join(folder, f"{name}.json")))
                  for name in order]
    lambda_runs = {p: results.load(p) for p in results.result_paths(os.path.join(folder, "lambda"))}
    try:
        return json.loads(json.dumps({"schema": results.SCHEMA} | rules.recipe_choice(candidates, lambda_runs)))
    except ValueError as e:
        raise results.ResultsError(str(e))


def write_recipe(folder, order, overwrite=False):
    """Write <folder>/../recipe.json once every input passed its checks. recipe.json is written once: a file that
    holds another choice of recipe (or other λ's) is replaced only with overwrite; λ's may be added to it."""
    out, path = recipe_from(folder, order), os.path.join(os.path.dirname(os.path.abspath(folder)), "recipe.json")
    old = results.read_json(path, "move it away") if os.path.exists(path) else None
    same = lambda keys: all(old.get(k) == out.get(k) for k in keys)  # the schema number is the writer's, not the choice's
    if old is not None and not overwrite and not same((set(old) | set(out)) - {"schema"}) and \
            not (same(("rule", "candidates", "chosen")) and not old.get("lambdas")):
        names = [c.get("name") for c in old.get("candidates") or [] if isinstance(c, dict)]
        raise results.ResultsError(f"{path} already holds another choice ({old.get('chosen')!r} of {names}, λ's "
                           f"{old.get('lambdas')}); the study's runs were trained with it: pass --overwrite to "
                           f"replace it, or move the file away")
    results.write_json(path, out)
    return out


def committed(path):
    """The JSON that git's HEAD holds at path; False where HEAD lacks it or holds no valid JSON there; None where
    there is no git or the path lies outside the repository (then nothing can show what came first)."""
    rel = os.path.relpath(os.path.abspath(path), results.REPO)
    try:
        r = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=results.REPO, capture_output=True, text=True)
    except OSError:  # no git installed
        return None
    if r.returncode:
        return None if "not a git repository" in r.stderr or "outside repository" in r.stderr else False
    try:
        return json.loads(r.stdout)
    except ValueError:
        return False


def load_choice(folder):
    """folder/choice.json of the data-size study (datasize.py), checked; None where there is none."""
    path = os.path.join(folder, "choice.json")
    if not os.path.exists(path):
        return None
    r = results.read_json(path, "restore it (git checkout) or move it away")
    chosen = lambda e: isinstance(e, dict) and isinstance(e.get("chosen"), dict) and \
        all(isinstance(e["chosen"].get(k), (int, float)) for k in ("l1", "l2"))
    if not isinstance(r, dict) or not isinstance(r.get("sizes"), dict) or not all(map(chosen, r["sizes"].values())):
        raise results.ResultsError(f"{path}: no sizes, or a size without its chosen l1 and l2; restore it (git checkout) or "
                           f"move it away")
    return r


def write_choice(folder, size, runs, grid):
    """Apply rules.datasize_choice to one size's validation runs and add its entry to folder/choice.json; an
    entry already there is never replaced by a different one (it was committed before that size's test runs)."""
    try:
        entry = rules.datasize_choice(runs, grid)
    except ValueError as e:
        raise results.ResultsError(str(e))
    path, have = os.path.join(folder, "choice.json"), load_choice(folder) or {"schema": results.SCHEMA, "sizes": {}}
    old = have["sizes"].get(str(size))
    if old and old != json.loads(json.dumps(entry)):
        raise results.ResultsError(f"{path} already holds another choice for n{size} ({old['chosen']}); it is the one its "
                           f"test runs used: move the file away to choose again")
    have["sizes"][str(size)] = entry
    results.write_json(path, have)
    return entry


def main(argv=None):
    p = argparse.ArgumentParser(prog="choices.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["recipe"], help="apply the recipe and λ rules to validation runs")
    p.add_argument("folder", help="the candidates' runs <name>.json, the λ runs in lambda/; recipe.json goes beside it")
    p.add_argument("candidates", nargs="+", help="candidate names, from the fewest changes to the most")
    p.add_argument("--overwrite", action="store_true", help="replace a recipe.json that holds another choice")
    args = p.parse_args(argv)
    try:
        rec = write_recipe(args.folder, args.candidates, args.overwrite)
    except results.ResultsError as e:
        p.exit(2, f"choices.py: error: {e}\n")
    except (KeyError, TypeError, IndexError, AttributeError) as e:  # JSON that parses but is no results file
        p.exit(2, f"choices.py: error: a file in {args.folder} is not what train.py writes ({type(e).__name__}: {e})\n")
    for c in rec["candidates"]:
        mean = "diverged" if c["val_acc_mean"] is None else f"{c['val_acc_mean']:.3f}"
        print(f"{c['name']:>10}: val acc {mean} over seeds {c['seeds']} {c['val_acc']}")
    print(f"chosen: {rec['chosen']} ({rec['rule']})")


if __name__ == "__main__":
    main()
