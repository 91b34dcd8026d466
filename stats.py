"""Summaries over seeds and paired statistics: what a reader may conclude from the final accuracies."""
import math
import os

import numpy as np
import scipy.stats
import torch

import regularizers
from rules import AIM, ALPHA, BASE, FAMILIES, differences, experiment, verdict

def finals(result, key="final_test_acc"):
    """{seed: final value} of the runs that did not diverge; key "final_test_loss" is the last epoch's test_loss."""
    return {r["seed"]: r["epochs"][-1]["test_loss"] if key == "final_test_loss" else r[key]
            for r in result["runs"] if r["status"] == "ok"}


def ok_runs(result):
    """The runs of a result that did not diverge."""
    return [run for run in result["runs"] if run["status"] == "ok"]


def summarize(runs):
    """The summary a results file stores: mean, sample std, min and max of the final accuracy over seeds."""
    ok = [r["final_test_acc"] for r in runs if r["status"] == "ok"]
    t = torch.tensor(ok, dtype=torch.float64)
    return {"final_test_acc_mean": t.mean().item() if ok else None,
            "final_test_acc_std": t.std().item() if len(ok) > 1 else None,  # sample std (n-1); none for one seed
            "final_test_acc_min": min(ok, default=None), "final_test_acc_max": max(ok, default=None),
            "seeds": [r["seed"] for r in runs], "diverged": [r["seed"] for r in runs if r["status"] != "ok"]}


def describe(summary, short=False):
    """'99.42 ± 0.03 (min 99.38, 5 seeds)', or '99.42 (1 seed)': one seed has no spread to print; short (a table's
    cell, beside its min and max columns): '99.42 ± 0.03'."""
    s = summary
    if s["final_test_acc_mean"] is None:
        return "diverged"
    n = len(s["seeds"]) - len(s["diverged"])
    if n == 1:
        return f"{s['final_test_acc_mean']:.2f} (1 seed)"
    spread = f"{s['final_test_acc_mean']:.2f} ± {s['final_test_acc_std']:.2f}"
    return spread if short else f"{spread} (min {s['final_test_acc_min']:.2f}, {n} seeds)"


def split(found):
    """'test' or 'validation': a results folder holds one split (results.load_folder sees to it)."""
    return "validation" if next(iter(found.values()))["config"]["val"] else "test"


def interval(diffs, level=0.95):
    """Mean of paired differences with its two-sided Student t-interval at `level` (None, None for a single pair);
    the quantile is exact (scipy), never a rounded table value."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return float(d.mean()), None, None
    half = scipy.stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def p_value(diffs):
    """Two-sided p of the paired t-test that the mean difference is 0 (None for a single pair)."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return None
    if d.std(ddof=1) == 0:  # no spread: t is infinite, or 0/0 where every difference is 0
        return 1.0 if d.mean() == 0 else 0.0
    return float(scipy.stats.ttest_1samp(d, 0.0).pvalue)


def holm(pvalues):
    """Holm's step-down adjusted p-values, in the order given: compare each with ALPHA."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [None] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def family(diffs, margin=None, better=1, base_of=lambda key: BASE):
    """diffs: {contrast: paired differences} of one family -> {contrast: mean, 95% interval, p, Holm-adjusted p,
    90% interval, whether that lies inside ±margin (the two one-sided tests), side and verdict}. better: +1 where
    a higher value is better (accuracy), -1 where lower is (loss); base_of(contrast) names what the verdict
    compares with. Contrasts with a single pair get no test."""
    out = {key: dict(zip(("mean", "lo", "hi"), interval(d))) | {"n": len(d), "p": p_value(d)} for key, d in diffs.items()}
    tested = [key for key in out if out[key]["p"] is not None]
    for key, adjusted in zip(tested, holm([out[key]["p"] for key in tested])):
        c = out[key]
        _, lo90, hi90 = interval(diffs[key], 0.90)
        c.update(p_holm=adjusted, lo90=lo90, hi90=hi90, reject=adjusted < ALPHA,
                 equivalent=margin is not None and -margin < lo90 and hi90 < margin,
                 side=better * side(c["lo"], c["hi"]) if adjusted < ALPHA else 0)
        c["verdict"] = verdict(c["reject"], c["side"], c["equivalent"], margin, base_of(key))
    return out


def side(lo, hi):
    """+1 where an interval lies wholly above 0, -1 wholly below, 0 where it contains 0 (not told from noise)."""
    return (lo > 0) - (hi < 0)


def paired(result, base, key="final_test_acc"):
    """(seeds both finished, result - base per seed). Only runs that differ in nothing but the penalty and the norm
    pair up; ValueError lists every other difference."""
    diff = differences(result["config"], base["config"], ignore=experiment())
    if diff:
        raise ValueError(f"{result['config']['name']} and {base['config']['name']} were trained differently "
                         f"({', '.join(diff)}); they cannot be compared")
    fa, fb = finals(result, key), finals(base, key)
    seeds = sorted(set(fa) & set(fb))
    return seeds, [fa[s] - fb[s] for s in seeds]


def curves(result, key):
    """(epochs,) and (seeds, epochs) array of one per-epoch metric (a record's key, or a function of the record);
    NaN where a run diverged or stopped early."""
    n, get = result["config"]["epochs"], key if callable(key) else lambda e: e[key]
    arr = np.full((len(result["runs"]), n), np.nan)
    for i, run in enumerate(result["runs"]):
        for e in run["epochs"]:
            arr[i, e["epoch"] - 1] = np.nan if get(e) is None else get(e)
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


def datasize_rows(study, base=BASE, families=("datasize_acc", "datasize_loss")):
    """study: {N: {variant: result}} -> [{size, variant, acc/loss: mean, min, max, and the paired difference from
    base with its 95% interval (diff, lo, hi; None for base), its p, Holm-adjusted p over every size and variant of
    the family (rules.FAMILIES) and verdict}], sizes ascending."""
    rows, diffs = [], {"acc": {}, "loss": {}}
    for size, found in sorted(study.items()):
        for name, r in found.items():
            cfg = r["config"]  # `epochs` counts evaluations here; passes over the subset fall as it grows
            row = {"size": size, "variant": name, "seeds": len(finals(r)),
                   "passes": cfg["steps"] * cfg["batch_size"] / size if cfg["steps"] else cfg["epochs"]}
            for key, short in (("final_test_acc", "acc"), ("final_test_loss", "loss")):
                vals = list(finals(r, key).values())
                row |= {f"{short}_mean": float(np.mean(vals)) if vals else None, f"{short}_min": min(vals, default=None),
                        f"{short}_max": max(vals, default=None)}
                diff = paired(r, found[base], key)[1] if name != base and base in found else []
                mean, lo, hi = interval(diff) if diff else (None, None, None)
                row |= {f"{short}_diff": mean, f"{short}_lo": lo, f"{short}_hi": hi, f"{short}_p": None,
                        f"{short}_p_holm": None, f"{short}_lo90": None, f"{short}_hi90": None, f"{short}_verdict": None}
                if len(diff) > 1:
                    diffs[short][size, name] = diff
            rows.append(row)
    for short, name in zip(("acc", "loss"), families):
        fam = FAMILIES[name]
        tested = family(diffs[short], fam.margin, fam.better)
        for row in rows:
            c = tested.get((row["size"], row["variant"]))
            if c:
                row |= {f"{short}_{k}": c[k] for k in ("p", "p_holm", "lo90", "hi90", "verdict")}
    return rows


# -----------------------------------------------------------------------------
# the effective step of the scale-invariant layers (norms.png, the README)

LAYERS = [f"conv{i}" for i in range(1, 10)]
SCALE_INVARIANT = LAYERS[:regularizers.SCALE_INVARIANT]  # they feed ReLU -> BatchNorm: the output ignores their scale


def norm_curves(result):
    """{conv1: (seeds, epochs), ...} weight norms of the runs whose epochs record them; None where none do (older
    files)."""
    runs = [run for run in result["runs"] if run["epochs"] and all("weight_norm" in e for e in run["epochs"])]
    with_norms = dict(result, runs=runs)
    return {k: curves(with_norms, lambda e, k=k: e["weight_norm"].get(k))[1] for k in LAYERS} if runs else None


EPOCH_RANGES = [(1, 4), (5, 10), (11, 15)]            # early, the middle where penalised runs trail, the anneal


def effective_step(result):
    """(epochs,) seed mean of lr / Σ over conv1-8 of ‖w‖², the step a scale-invariant layer effectively takes
    (van Laarhoven 2017), from the weight norms each epoch records; None where the epochs record none."""
    runs = [run for run in result["runs"] if run["status"] == "ok" and all("weight_norm" in e for e in run["epochs"])]
    if not runs:
        return None
    return np.mean([[e["lr"] / sum(e["weight_norm"][k] ** 2 for k in SCALE_INVARIANT) for e in run["epochs"]]
                    for run in runs], 0)


def step_ratio(result, base):
    """(epochs,) effective step of result over base's, seed means: how much larger a step the penalty makes."""
    a, b = effective_step(result), effective_step(base)
    return None if a is None or b is None else a / b
