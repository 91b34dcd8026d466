"""Summaries over seeds and paired statistics: what a reader may conclude from the final accuracies."""
import math
import os

import numpy as np
import torch

from rules import AIM, BASE, EXPERIMENT, differences

# two-sided 95% Student t quantiles by degrees of freedom; a normal 1.96 beyond the table
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def finals(result, key="final_test_acc"):
    """{seed: final value} of the runs that did not diverge; key "final_test_loss" is the last epoch's test_loss."""
    return {r["seed"]: r["epochs"][-1]["test_loss"] if key == "final_test_loss" else r[key]
            for r in result["runs"] if r["status"] == "ok"}


def summarize(runs):
    """The summary a results file stores: mean, sample std, min and max of the final accuracy over seeds."""
    ok = [r["final_test_acc"] for r in runs if r["status"] == "ok"]
    t = torch.tensor(ok, dtype=torch.float64)
    return {"final_test_acc_mean": t.mean().item() if ok else None,
            "final_test_acc_std": t.std().item() if len(ok) > 1 else None,  # sample std (n-1); none for one seed
            "final_test_acc_min": min(ok, default=None), "final_test_acc_max": max(ok, default=None),
            "seeds": [r["seed"] for r in runs], "diverged": [r["seed"] for r in runs if r["status"] != "ok"]}


def describe(summary):
    """'99.42 ± 0.03 (min 99.38, 5 seeds)', or '99.42 (1 seed)': one seed has no spread to print."""
    s = summary
    if s["final_test_acc_mean"] is None:
        return "diverged"
    n = len(s["seeds"]) - len(s["diverged"])
    if n == 1:
        return f"{s['final_test_acc_mean']:.2f} (1 seed)"
    return f"{s['final_test_acc_mean']:.2f} ± {s['final_test_acc_std']:.2f} (min {s['final_test_acc_min']:.2f}, {n} seeds)"


def t95(df):
    return T95.get(df) or T95[max(k for k in T95 if k <= df)] if df <= 30 else 1.96


def interval(diffs):
    """Mean of paired differences with its two-sided 95% t-interval (None, None for a single pair)."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return float(d.mean()), None, None
    half = t95(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def side(lo, hi):
    """+1 where an interval lies wholly above 0, -1 wholly below, 0 where it contains 0 (not told from noise)."""
    return (lo > 0) - (hi < 0)


def paired_interval(a, b):
    """interval() of a_i - b_i."""
    return interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


def paired(result, base, key="final_test_acc"):
    """(seeds both finished, result - base per seed). Only runs that differ in nothing but the penalty and the norm
    pair up; ValueError lists every other difference."""
    diff = differences(result["config"], base["config"], ignore=EXPERIMENT)
    if diff:
        raise ValueError(f"{result['config']['name']} and {base['config']['name']} were trained differently "
                         f"({', '.join(diff)}); they cannot be compared")
    fa, fb = finals(result, key), finals(base, key)
    seeds = sorted(set(fa) & set(fb))
    return seeds, [fa[s] - fb[s] for s in seeds]


def curves(result, key):
    """(epochs,) and (seeds, epochs) array of one per-epoch metric; NaN where a run diverged or stopped early."""
    n = result["config"]["epochs"]
    arr = np.full((len(result["runs"]), n), np.nan)
    for i, run in enumerate(result["runs"]):
        for e in run["epochs"]:
            arr[i, e["epoch"] - 1] = np.nan if e[key] is None else e[key]
    return np.arange(1, n + 1), arr


def pairs(found, base=BASE):
    """{name: (seeds, differences from base) or the reason it cannot be paired}, for every other results file."""
    out = {}
    for name, r in found.items():
        if name == base or base not in found:
            continue
        try:
            seeds, diffs = paired(r, found[base])
            out[name] = (seeds, diffs) if seeds else f"{name} shares no finished seed with {base}"
        except ValueError as e:
            out[name] = str(e)
    return out


# -----------------------------------------------------------------------------
# what a results file stores beside its records must equal what the records give

def derived(run, config):
    """What follows from a finished run's epochs and its evaluation: the numbers train.py stores beside them."""
    accs = [e["test_acc"] for e in run["epochs"]]
    best = max(range(len(accs)), key=lambda j: accs[j])
    n = config["test_limit"] or 10000
    return {"test_correct": n - len(run["misclassified"]), "final_test_acc": 100.0 * (n - len(run["misclassified"])) / n,
            "best_test_acc": accs[best], "best_epoch": best + 1,
            "first_epoch_at_99_4": next((e["epoch"] for e in run["epochs"] if e["test_acc"] >= AIM), None)}


def check_derived(r):
    """ValueError naming the first stored number of result r that differs from its derivation."""
    for run in r["runs"]:
        if run["status"] != "ok":  # a diverged run ends in the epoch whose loss was not finite (stored as null)
            last = run["epochs"][-1] if run["epochs"] else {}
            if run["status"] != "diverged" or last.get("epoch") != run.get("diverged_epoch") or \
                    None not in (last.get("train_loss"), last.get("penalty")):
                raise ValueError(f"seed {run['seed']}: status {run['status']!r}, but its epochs end without the "
                                 f"non-finite loss that marks a diverged run")
            continue
        if not isinstance(run.get("checkpoint"), str) or os.path.basename(run["checkpoint"]) != run["checkpoint"] \
                or not run["checkpoint"]:  # a file beside the JSON: plot.py and verify.py load it
            raise ValueError(f"seed {run['seed']}: checkpoint {run.get('checkpoint')!r} is not a file name beside the JSON")
        if len(run["epochs"]) != r["config"]["epochs"] or run["final_test_acc"] != run["epochs"][-1]["test_acc"]:
            raise ValueError(f"seed {run['seed']}: final_test_acc {run['final_test_acc']} is not the last of its "
                             f"{len(run['epochs'])} epochs' test_acc")
        for key, value in derived(run, r["config"]).items():
            if run.get(key) != value:
                raise ValueError(f"seed {run['seed']}: {key} is {run.get(key)}, its records give {value}")
    want = summarize(r["runs"])
    for key, value in want.items():
        if r["summary"].get(key) != value:
            raise ValueError(f"summary {key} is {r['summary'].get(key)}, its runs give {value}")


def sweep_points(found):
    """{name: validation point} of the λ sweep's runs (results/sweep/*.json, from `make sweep`)."""
    points = {}
    for name, r in found.items():
        cfg = r["config"]
        kind = "none" if not cfg["l1"] and not cfg["l2"] else "l1" if not cfg["l2"] else "l2" if not cfg["l1"] else "l1l2"
        accs = [run["final_test_acc"] if run["status"] == "ok" else float("nan") for run in r["runs"]]
        points[name] = {"penalty": kind, "lambda": cfg["l1"] if kind == "l1" else cfg["l2"], "val_acc": accs,
                        "val_acc_mean": sum(accs) / len(accs), "val_acc_min": min(accs), "val_acc_max": max(accs),
                        "seeds": [run["seed"] for run in r["runs"]], "epochs": cfg["epochs"]}
    return points


def datasize_rows(study, base=BASE):
    """study: {N: {variant: result}} -> [{size, variant, acc/loss: mean, min, max, and the paired difference from
    base with its 95% interval (diff, lo, hi; None for base)}], sizes ascending."""
    rows = []
    for size, found in sorted(study.items()):
        for name, r in found.items():
            row = {"size": size, "variant": name, "seeds": len(finals(r))}
            for key, short in (("final_test_acc", "acc"), ("final_test_loss", "loss")):
                vals = list(finals(r, key).values())
                row |= {f"{short}_mean": float(np.mean(vals)) if vals else None, f"{short}_min": min(vals, default=None),
                        f"{short}_max": max(vals, default=None)}
                diff = paired(r, found[base], key)[1] if name != base and base in found else []
                mean, lo, hi = interval(diff) if diff else (None, None, None)
                row |= {f"{short}_diff": mean, f"{short}_lo": lo, f"{short}_hi": hi}
            rows.append(row)
    return rows

