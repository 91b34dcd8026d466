"""The one owner of the results files: their schema, writing (a checkpoint and its JSON as one unit), locking,
reading and validating, the per-variant summaries and the paired statistics.

    results/<name>.json                    one variant: config, env, one run per seed, summary (schema 2)
    results/<name>-seed<S>-<sha8>.pt       a run's final weights, a state_dict for model.Net; the JSON names it
    results/<name>.lock                    held (flock) while a train.py writes <name>.json
train.py writes through save(); plot.py reads through load_folder(). Nobody else writes results/*.json.
"""
import fcntl
import glob
import hashlib
import io
import json
import math
import os

import numpy as np
import torch

REPO = os.path.dirname(os.path.abspath(__file__))
SCHEMA = 2
NOT_RESULTS = {"sweep.json", "recipe.json"}  # JSON files in results/ that describe several runs, not one variant
# config keys that say where a run was written or which seeds it holds, not what was computed,
# or how it was evaluated or packed (both change only the last bits of float sums: equally valid runs)
NOT_COMPARED = {"seeds", "device", "data", "out", "name", "eval_batch_size", "packed"}
# keys that may differ between two variants being compared: the penalty and the norm are the experiment
EXPERIMENT = {"variant", "l1", "l2", "norm"}
# two-sided 95% Student t quantiles by degrees of freedom; a normal 1.96 beyond the table
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


class ResultsError(Exception):
    """A results file is missing, damaged, of an unknown schema, locked or would be overwritten; the message says
    which file and the ways out."""


# -----------------------------------------------------------------------------
# writing: a temporary file in the same folder, then os.replace, so a reader sees the old file or the new one

def atomic_write(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:  # a full disk reports no file name: name the one being written
        e.filename = e.filename or path
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
            f.write("\n")
    atomic_write(path, write)


def save_torch(path, obj):
    """torch.save into memory, then a plain file write: on a full disk torch.save's own writer raises a
    RuntimeError about stream positions, a plain write raises OSError(ENOSPC), which train.py explains."""
    buf = io.BytesIO()
    torch.save(obj, buf)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
    atomic_write(path, write)


def checkpoint_name(name, seed, state_dict):
    """<name>-seed<S>-<first 8 hex of the weights' SHA-256>.pt: new weights never take an old file's name."""
    h = hashlib.sha256()
    for key, t in state_dict.items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"{name}-seed{seed}-{h.hexdigest()[:8]}.pt"


def save(folder, name, result, weights):
    """Write the new checkpoints (weights: {seed: state_dict}), then the JSON that names them, then delete the
    checkpoints of <name> that the JSON no longer names. Checkpoints never reuse a name, so a kill at any point
    leaves the old JSON with its old checkpoints or the new JSON with its new ones, plus at worst an orphan."""
    for run in result["runs"]:
        if run["seed"] in weights:
            ckpt = os.path.join(folder, checkpoint_name(name, run["seed"], weights[run["seed"]]))
            save_torch(ckpt, weights[run["seed"]])
            run["checkpoint"] = os.path.relpath(os.path.abspath(ckpt), REPO)
    write_json(os.path.join(folder, f"{name}.json"), result)
    named = {os.path.abspath(os.path.join(REPO, r["checkpoint"])) for r in result["runs"] if r.get("checkpoint")}
    for path in glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(name)}-seed*.pt")):
        if os.path.abspath(path) not in named and checkpoint_owner(path) == name:
            os.remove(path)


def checkpoint_owner(path):
    """The <name> of a <name>-seed<S>[-<sha8>].pt file (names may themselves contain '-seed')."""
    stem = os.path.basename(path)[:-3]
    head, _, tail = stem.rpartition("-seed")
    return head if tail.split("-")[0].isdigit() else None


class Lock:
    """An exclusive flock on <folder>/<name>.lock while one train.py writes <name>.json; the kernel releases it
    when the process dies, so a killed run never leaves a stale lock behind."""

    def __init__(self, folder, name):
        self.path = os.path.join(folder, f"{name}.lock")

    def __enter__(self):
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise ResultsError(f"another train.py is writing {self.path[:-5]}.json right now (it holds {self.path}); "
                               f"wait for it, or use another --name or --out")
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


# -----------------------------------------------------------------------------
# reading and validating

def load(path):
    """One results JSON, checked: parses, has the current schema and what plot.py and train.py read."""
    try:
        with open(path) as f:
            r = json.load(f)
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror})")
    except ValueError as e:
        raise ResultsError(f"{path}: not valid JSON ({e}); move it away, or pass --overwrite to train.py")
    if not isinstance(r, dict) or r.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: schema {r.get('schema') if isinstance(r, dict) else None!r}, this code reads "
                           f"schema {SCHEMA}; move it away, or pass --overwrite to train.py")
    if not r.get("runs") or not all(k in r for k in ("variant", "config", "runs", "summary")) or \
            not all(isinstance(run, dict) and "seed" in run and "status" in run for run in r["runs"]):
        raise ResultsError(f"{path}: no runs, or missing variant/config/summary")
    return r


def load_recipe(folder):
    """folder/recipe.json (written by `make recipe` / `make lambdas`), checked; None where there is none."""
    path = os.path.join(folder, "recipe.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: cannot be read ({type(e).__name__}); run `make recipe` again or move it away")
    if not isinstance(r, dict) or not r.get("candidates") or "chosen" not in r:
        raise ResultsError(f"{path}: no candidates or no chosen recipe; run `make recipe` again or move it away")
    return r


def load_folder(folder):
    """{name: result} for every <name>.json in folder that train.py wrote, in the variant table's order."""
    from regularizers import VARIANTS
    paths = sorted(p for p in glob.glob(os.path.join(glob.escape(folder), "*.json"))
                   if os.path.basename(p) not in NOT_RESULTS)
    if not paths:
        raise ResultsError(f"{folder}: no results JSON found; train a variant first (make l1)")
    found = {os.path.splitext(os.path.basename(p))[0]: load(p) for p in paths}
    order = {n: i for i, n in enumerate(VARIANTS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[1]["variant"], 99), kv[0])))


def comparable(config):
    """The part of a config that decides the numbers: two runs with equal parts may share a results file."""
    return {k: v for k, v in config.items() if k not in NOT_COMPARED}


def differences(a, b, ignore=()):
    """'key (a -> b)' for each key where configs a and b differ, outside NOT_COMPARED and ignore."""
    a, b = comparable(a), comparable(b)
    return [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


def check_merge(path, old, config):
    """A run may add seeds to an existing results file only if it computes the same way; else one line that
    names the file, what differs and the ways out."""
    diff = differences(old["config"], config)
    if diff:
        raise ResultsError(f"{path} holds a finished run with another config ({', '.join(diff[:4])}"
                           f"{', ...' if len(diff) > 4 else ''}); use another --name or --out, or --overwrite "
                           f"to replace it")


# -----------------------------------------------------------------------------
# summaries and paired statistics

def finals(result):
    """{seed: final test accuracy} of the runs that did not diverge."""
    return {r["seed"]: r["final_test_acc"] for r in result["runs"] if r["status"] == "ok"}


def summarize(runs):
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


def paired_interval(a, b):
    """Mean of the paired differences a_i - b_i with its two-sided 95% t-interval (None, None for one pair)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) < 2:
        return float(d.mean()), None, None
    half = t95(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def paired(result, base):
    """Seeds both finished, and (result - base) per seed: only runs that differ in penalty and norm pair up."""
    diff = differences(result["config"], base["config"], ignore=EXPERIMENT)
    if diff:
        raise ResultsError(f"{result['variant']} and {base['variant']} were trained differently "
                           f"({', '.join(diff[:4])}); they cannot be compared")
    fa, fb = finals(result), finals(base)
    seeds = sorted(set(fa) & set(fb))
    return seeds, [fa[s] - fb[s] for s in seeds]


# -----------------------------------------------------------------------------
# validation-split searches: the lambda sweep (make sweep) and the recipe search (make recipe -> recipe.json)

def sweep_points(folder):
    """{name: validation point} of the lambda sweep's runs (results/sweep/*.json, from `make sweep`)."""
    points = {}
    for name, r in load_folder(folder).items():
        cfg = r["config"]
        kind = "none" if not cfg["l1"] and not cfg["l2"] else "l1" if not cfg["l2"] else "l2" if not cfg["l1"] else "l1l2"
        lam = cfg["l1"] if kind == "l1" else cfg["l2"]
        accs = [run["final_test_acc"] if run["status"] == "ok" else float("nan") for run in r["runs"]]
        points[name] = {"penalty": kind, "lambda": lam, "val_acc": accs, "val_acc_mean": float(np.mean(accs)),
                        "val_acc_min": float(np.min(accs)), "val_acc_max": float(np.max(accs)),
                        "seeds": [run["seed"] for run in r["runs"]], "epochs": cfg["epochs"]}
    return points


RECIPE_RULE = ("highest mean final validation accuracy over the seeds (train on the first 50k, evaluate on the "
               "last 10k training images); candidates within 0.05 points of the best count as tied, and among "
               "tied ones the one listed first wins (the list runs from the fewest changes to the most)")
LAMBDA_RULE = ("per penalty, the largest lambda whose mean final validation accuracy stays within 0.05 points of "
               "the chosen recipe without penalty (the strongest penalty that costs nothing measurable)")


def val_summary(result):
    accs = [r["final_test_acc"] for r in result["runs"] if r["status"] == "ok"]
    return {"seeds": [r["seed"] for r in result["runs"]], "val_acc": accs,
            "val_acc_mean": sum(accs) / len(accs) if accs else None}


def choose_recipe(folder, order, lambda_folder=None):
    """recipe.json from the candidate runs in folder (names in `order`, simplest first) and, when present, the
    lambda runs in lambda_folder (<penalty>-<lambda>.json)."""
    candidates = []
    for name in order:
        r = load(os.path.join(folder, f"{name}.json"))
        if not r["config"]["val"]:
            raise ResultsError(f"{folder}/{name}.json was not a validation run (--val); the test set stays untouched")
        candidates.append({"name": name, "config": r["config"]} | val_summary(r))
    best = max(c["val_acc_mean"] for c in candidates if c["val_acc_mean"] is not None)
    chosen = next(c for c in candidates if c["val_acc_mean"] is not None and c["val_acc_mean"] >= best - 0.05)
    out = {"schema": SCHEMA, "rule": RECIPE_RULE, "candidates": candidates, "chosen": chosen["name"],
           "lambdas": None, "lambda_rule": LAMBDA_RULE}
    if lambda_folder and glob.glob(os.path.join(glob.escape(lambda_folder), "*.json")):
        points = [load(p) for p in sorted(glob.glob(os.path.join(glob.escape(lambda_folder), "*.json")))]
        out["lambda_points"], out["lambdas"] = [], {}
        for key in ("l1", "l2"):
            pts = sorted(((r["config"][key], val_summary(r)) for r in points if r["variant"] == key), key=lambda p: p[0])
            out["lambda_points"] += [{"penalty": key, "lambda": lam} | s for lam, s in pts]
            ok = [lam for lam, s in pts if s["val_acc_mean"] is not None and s["val_acc_mean"] >= chosen["val_acc_mean"] - 0.05]
            out["lambdas"][key] = max(ok) if ok else None
    write_json(os.path.join(os.path.dirname(folder.rstrip("/")), "recipe.json"), out)
    return out


if __name__ == "__main__":  # python results.py recipe results/recipe base nodrop ...   (make recipe)
    import sys
    if len(sys.argv) < 4 or sys.argv[1] != "recipe":
        sys.exit("usage: python results.py recipe FOLDER CANDIDATE [CANDIDATE ...]")
    try:
        rec = choose_recipe(sys.argv[2], sys.argv[3:], lambda_folder=os.path.join(sys.argv[2], "lambda"))
    except ResultsError as e:
        sys.exit(f"results.py: error: {e}")
    for c in rec["candidates"]:
        print(f"{c['name']:>10}: val acc {c['val_acc_mean']:.3f} over seeds {c['seeds']} {c['val_acc']}")
    print(f"chosen: {rec['chosen']} ({rec['rule']})")
