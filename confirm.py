"""The confirmatory study: a plan written from rules.py and committed before any of its runs, then two studies on
fresh seeds that no choice has seen. It settles the main answer at ±0.05 points, and tests why L2 helps at 1,000
images (its effective step behind BatchNorm, or its penalty on the classifier).

    python confirm.py plan         # write results/confirm/plan.json; commit it before anything else runs
    python confirm.py main         # 60,000 images, 15 epochs: none, l1, l2, l1l2 x 20 seeds -> results/confirm/main/
    python confirm.py mechanism    # 1,000 images, 9,375 steps: none, l2, none_normmatch, l2_conv9 x 10 seeds
                                   #   -> results/confirm/n1000/
    python confirm.py all          # both, pack by pack, two train.py at a time (make confirm): what is done is
                                   # skipped, an interrupted pack continues (--resume); nothing starts while the
                                   # plan on disk is not the committed one
"""
import program

if __name__ == "__main__":
    program.quiet_until_ready("confirm.py")  # Ctrl-C while torch imports: one line; train.py runs hold their own

import argparse
import json
import os
import sys
from dataclasses import asdict

import choices
import datasize
import regularizers
import results
import rules
import stats
from config import Config
from program import Stop

SEEDS = {"main": list(range(100, 120)), "mechanism": list(range(200, 210))}  # fresh: see rules.check_seeds
PACK = {"main": 5, "mechanism": 5}   # seeds per pack: main packs one variant's 5 seeds, mechanism 4 arms x 5 seeds
N1000 = 1000
# two train.py processes at once, one thread each: ~1.25x the throughput of one process with two threads on the
# 2-core CPU (docs/performance.md); the thread count changes the last bits, so the plan fixes it
LAYOUT = {"processes": 2, "threads": 1}


def plan(folder):
    """The plan's content: the arms and their fixed settings, the seeds, the families and the decision words."""
    rules.check_seeds([], SEEDS["main"] + SEEDS["mechanism"])
    choice = choices.load_choice(os.path.join(folder, "datasize"))
    if not choice or str(N1000) not in choice["sizes"]:
        raise results.ResultsError(f"{folder}/datasize/choice.json has no λ for n{N1000}: the mechanism control "
                                   f"takes λ2 from it")
    l2_n1000 = choice["sizes"][str(N1000)]["chosen"]["l2"]
    recipe = {k: v for k, v in asdict(Config()).items() if k not in rules.NOT_COMPARED | rules.experiment() | {"epochs"}}
    family = lambda f: asdict(f) | {"contrasts": f.contrasts(), "alpha": rules.ALPHA, "correction": "Holm",
                                     "interval": "95% paired Student t (exact quantile)",
                                     "equivalence": "90% paired t-interval inside ±margin (two one-sided tests)"}
    return {
        "schema": 1, "written_by": "python confirm.py plan (rules.py)",
        "recipe": recipe | {"note": "every arm: Config's defaults, the main study's recipe (results/recipe.json)"},
        "layout": LAYOUT | {"note": "train.py processes at once and OMP threads each, on the CPU"},
        "main": {"folder": "confirm/main", "variants": ["none", "l1", "l2", "l1l2"], "seeds": SEEDS["main"],
                 "epochs": 15, "l1": regularizers.L1, "l2": regularizers.L2, "seeds_per_pack": PACK["main"],
                 "family": family(rules.CONFIRM_FAMILIES["confirm_main"]),
                 "also": f"each variant's mean final test accuracy against the {rules.TARGETS['bn']} aim, and the "
                         f"count of seeds below {rules.AIM}"},
        "mechanism": {"folder": f"confirm/n{N1000}", "variants": ["none", *rules.MECHANISM], "seeds": SEEDS["mechanism"],
                      "train_subset": N1000, "steps": datasize.STEPS, "epochs": datasize.POINTS, "l2": l2_n1000,
                      "l2_from": f"datasize/choice.json, n{N1000}", "seeds_per_pack": PACK["mechanism"],
                      "norm_match": "none_normmatch: no penalty; after every optimizer step each of conv1-8 is rescaled "
                                    "to the norm l2 (same seed, same pack) has after that step, its momentum buffer "
                                    "divided by the same factor; conv9 is left alone",
                      "primary": family(rules.CONFIRM_FAMILIES["confirm_mechanism"]),
                      "secondary": family(rules.CONFIRM_FAMILIES["confirm_mechanism_acc"]),
                      "decision": rules.MECHANISM_DECISION},
        "verdict_words": ["beats <base>", "is worse than <base>", "is equal to <base> within ±<margin>",
                          "is not distinguishable from <base>"],
    }


def write_plan(folder):
    path, new = os.path.join(folder, "confirm", "plan.json"), plan(folder)
    if os.path.exists(path):
        if results.read_json(path, "restore it (git checkout)") != json.loads(json.dumps(new)):
            raise results.ResultsError(f"{path} holds another plan; a committed plan is never rewritten: move it "
                                       f"away only if no confirmatory run has used it")
        print(f"{os.path.relpath(path)} is already this plan")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    results.write_json(path, new)
    print(f"wrote {os.path.relpath(path)}: commit it before `python confirm.py main` or `mechanism`")


def committed_plan(folder):
    """The plan, once git's HEAD holds it as it is on disk; Stop otherwise (no git: a note, and the plan)."""
    path = os.path.join(folder, "confirm", "plan.json")
    if not os.path.exists(path):
        raise Stop(2, f"no plan at {path}: run `python confirm.py plan` and commit it first")
    have, head = results.read_json(path, "restore it (git checkout)"), choices.committed(path)
    rel = os.path.relpath(os.path.abspath(path), results.REPO)
    if head is None:
        print(f"note: no git here, so nothing shows that {rel} came before the runs")
    elif head != have:
        raise Stop(2, f"{rel} is not committed as it is on disk: the protocol commits the plan before any "
                      f"confirmatory run; commit it, then run this again")
    return have


def packs(study, p, folder):
    """[(train.py arguments, out, names, seeds)] of one study, pack by pack, as the plan fixes them."""
    s, out = p[study], os.path.join(folder, p[study]["folder"])
    blocks = [s["seeds"][i:i + s["seeds_per_pack"]] for i in range(0, len(s["seeds"]), s["seeds_per_pack"])]
    if study == "main":
        lam = lambda v: [a for key in ("l1", "l2") if getattr(regularizers.VARIANTS[v], key) for a in (f"--{key}", f"{s[key]:g}")]
        return [(["--variant", v, *lam(v), "--epochs", str(s["epochs"]), "--seeds", ",".join(map(str, b)), "--packed",
                  "--out", out], out, [v], b) for b in blocks for v in s["variants"]]
    return [(["--variant", ",".join(s["variants"]), "--l2", f"{s['l2']:g}", "--train-subset", str(s["train_subset"]),
              "--steps", str(s["steps"]), "--epochs", str(s["epochs"]), "--seeds", ",".join(map(str, b)), "--packed",
              "--out", out], out, s["variants"], b) for b in blocks]


def run(studies, folder, extra):
    """Every pack of the studies not yet done, in the plan's order and layout (datasize.run_packs)."""
    p = committed_plan(folder)
    env = dict(os.environ, OMP_NUM_THREADS=str(p["layout"]["threads"]))
    datasize.run_packs([(args + extra, out, names, seeds) for study in studies
                        for args, out, names, seeds in packs(study, p, folder)], p["layout"]["processes"], env)


# -----------------------------------------------------------------------------
# the reading: the plan's families on its runs, and no verdict before every seed of the plan is in

def reading(folder):
    """{study: {"done", "total", "variants": {name: summary line}, "contrasts", "decision"}} from the committed plan
    and its runs; contrasts and decision are None until the study is complete. None where there is no plan."""
    path = os.path.join(folder, "confirm", "plan.json")
    if not os.path.exists(path):
        return None
    p, out = results.read_json(path, "restore it (git checkout)"), {}
    for study, key in (("main", "family"), ("mechanism", "primary")):
        s = p[study]
        where = os.path.join(folder, s["folder"])
        found = results.load_folder(where) if results.result_paths(where) else {}
        done = {v: sorted(stats.finals(found[v])) if v in found else [] for v in s["variants"]}
        entry = {"done": sum(map(len, done.values())), "total": len(s["variants"]) * len(s["seeds"]),
                 "variants": {v: stats.describe(found[v]["summary"]) for v in found}, "contrasts": None,
                 "secondary": None, "decision": None, "found": found}
        if entry["done"] == entry["total"]:
            entry["contrasts"] = family(found, s[key])
            if study == "mechanism":
                entry["secondary"] = family(found, s["secondary"])
                entry["decision"] = rules.mechanism_decision({k: c["verdict"] for k, c in entry["contrasts"].items()})
        out[study] = entry
    return out


def family(found, spec):
    """The plan's family on the runs: {(variant, base): stats.family entry}."""
    diffs = {(a, b): stats.paired(found[a], found[b], spec["measure"])[1] for a, b in spec["contrasts"]}
    return stats.family(diffs, spec["margin"], spec["better"], base_of=lambda k: k[1])


def main(argv=None):
    p = argparse.ArgumentParser(prog="confirm.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["plan", "main", "mechanism", "all"])
    p.add_argument("--results", default=os.path.join(results.REPO, "results"), help="the results folder")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="passed to train.py (changes no number's meaning)")
    args = p.parse_args(argv)
    extra = ["--device", args.device] if args.device else []
    program.ready()  # Ctrl-C is a KeyboardInterrupt again (ignored while a train.py run holds it)
    try:
        if args.step == "plan":
            write_plan(args.results)
        if args.step != "plan":  # the mechanism control first: its packs are the fewest and its question the newest
            run(["mechanism", "main"] if args.step == "all" else [args.step], args.results, extra)
    except results.ResultsError as e:
        p.exit(2, f"confirm.py: error: {e}\n")
    except Stop as e:
        p.exit(e.code, f"confirm.py: {e}\n")
    except KeyboardInterrupt:
        p.exit(130, "confirm.py: interrupted; what finished is kept\n")


if __name__ == "__main__":
    sys.exit(main())
