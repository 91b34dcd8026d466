"""Render the study's figures and REPORT.md from results/*.json alone; the only drawer.

    python plot.py [--results DIR] [--data DIR]
writes loss.png, accuracy.png, misclassified_<variant>.png, REPORT.md (and sweep.png + sweep.json when
DIR/sweep/ holds validation runs) into DIR. Everything is rendered to temporary files first, then renamed.
"""
import argparse
import glob
import json
import math
import os
import warnings

import matplotlib
matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch

import data
from model import Net
from regularizers import VARIANTS

SCHEMAS = {1}
# a diverged run stops early: its missing epochs are NaN, and an all-NaN column is expected, not an error
warnings.filterwarnings("ignore", "Mean of empty slice|All-NaN slice encountered", RuntimeWarning)
ORDER = list(VARIANTS)
COLORS = dict(zip(ORDER, ["black", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]))
# two-sided 95% Student t quantiles by degrees of freedom; a normal 1.96 beyond the table
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


class ResultsError(Exception):
    """A results file is missing, empty, malformed or of an unknown schema; the message names it."""


# -----------------------------------------------------------------------------
# reading

def load_results(folder):
    """{name: result} for every <name>.json in folder that train.py wrote; sweep.json is plot.py's own."""
    paths = sorted(p for p in glob.glob(os.path.join(folder, "*.json")) if os.path.basename(p) != "sweep.json")
    if not paths:
        raise ResultsError(f"{folder}: no results JSON found; train a variant first (make l1)")
    results = {}
    for path in paths:
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            raise ResultsError(f"{path}: not valid JSON ({e})")
        if not isinstance(r, dict) or r.get("schema") not in SCHEMAS:
            raise ResultsError(f"{path}: unknown schema {r.get('schema') if isinstance(r, dict) else None!r}; "
                               f"this plot.py reads schema {sorted(SCHEMAS)}")
        if not r.get("runs") or not all(k in r for k in ("config", "env", "summary")):
            raise ResultsError(f"{path}: no runs, or missing config/env/summary")
        results[os.path.splitext(os.path.basename(path))[0]] = r
    order = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(results.items(), key=lambda kv: (order.get(kv[1]["variant"], 99), kv[0])))


def curves(result, key):
    """(epochs,) and (seeds, epochs) array of one metric; NaN where a run diverged or stopped early."""
    n = result["config"]["epochs"]
    arr = np.full((len(result["runs"]), n), np.nan)
    for i, run in enumerate(result["runs"]):
        for e in run["epochs"]:
            arr[i, e["epoch"] - 1] = np.nan if e[key] is None else e[key]
    return np.arange(1, n + 1), arr


# -----------------------------------------------------------------------------
# figures

def band(ax, x, arr, label, color):
    """Seed mean as a line; min-max across seeds as a band when there are several."""
    ax.plot(x, np.nanmean(arr, 0), color=color, label=f"{label} (n={len(arr)})", lw=1.6)
    if len(arr) > 1:
        ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), color=color, alpha=0.18, lw=0)


def plot_loss(results, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in [(axes[0], "train_loss", "train loss (data loss, epoch mean)"),
                           (axes[1], "test_loss", "test loss")]:
        for name, r in results.items():
            x, arr = curves(r, key)
            band(ax, x, arr, name, COLORS.get(r["variant"], None))
        ax.set(title=title, xlabel="epoch", yscale="log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("cross-entropy (log scale)")
    axes[1].legend(title="variant, seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def plot_accuracy(results, path):
    fig, ax = plt.subplots(figsize=(9, 5))
    tail, top = [], []
    for name, r in results.items():
        x, arr = curves(r, "test_acc")
        band(ax, x, arr, name, COLORS.get(r["variant"], None))
        tail.append(np.nanmin(arr[:, min(2, arr.shape[1] - 1):]))  # zoom past the first two epochs
        top.append(np.nanmax(arr))
    ax.axhline(99.4, ls="--", color="gray", lw=1, label="99.4% target")
    lo, hi = np.nanmin(tail), np.nanmax(top)
    ax.set_ylim(max(lo - 0.1, 90) if np.isfinite(lo) else 90, min(max(hi, 99.4) + 0.1, 100) if np.isfinite(hi) else 100)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(title="test accuracy per epoch (seed mean, min-max band)", xlabel="epoch", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


@torch.no_grad()
def predict(result, run, images):
    """Predictions of a run's checkpoint, evaluated as train.py evaluates (same batch size and memory format)."""
    cfg = result["config"]
    root = os.path.dirname(os.path.abspath(__file__))
    ckpt = os.path.join(root, run["checkpoint"])
    if not os.path.exists(ckpt):
        raise ResultsError(f"{ckpt}: checkpoint named by the JSON is missing")
    net = Net(cfg["dropout"], cfg["norm"], cfg["virtual_batch"])
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    if cfg["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    net.eval()
    preds = []
    for start in range(0, len(images), cfg["batch_size"]):
        x = data.to_float(images[start:start + cfg["batch_size"]], cfg["normalize"])
        preds.append(net(x.contiguous(memory_format=torch.channels_last) if cfg["channels_last"] else x).argmax(1))
    return torch.cat(preds)


def eval_images(result, data_dir):
    """The images a run was evaluated on: the test set, or the validation split for a --val run."""
    train_x, train_y, test_x, test_y = data.load_mnist(data_dir, log=lambda s: None)
    cfg = result["config"]
    x, y = (train_x[50000:], train_y[50000:]) if cfg["val"] else (test_x, test_y)
    return (x[:cfg["test_limit"]], y[:cfg["test_limit"]]) if cfg["test_limit"] else (x, y)


def plot_misclassified(name, result, images, labels, path):
    """5x5 grid of the first 25 misclassified images of the first seed, checked against its checkpoint."""
    run = result["runs"][0]
    preds = predict(result, run, images)
    wrong = (preds != labels.long()).nonzero().flatten().tolist()
    if wrong != [m["index"] for m in run["misclassified"]]:
        raise ResultsError(f"{name}.json: misclassified list of seed {run['seed']} disagrees with {run['checkpoint']} "
                           f"({len(run['misclassified'])} listed, {len(wrong)} found)")
    fig, axes = plt.subplots(5, 5, figsize=(6.5, 7.2))
    for ax, m in zip(axes.flat, run["misclassified"][:25]):
        ax.imshow(images[m["index"]].numpy(), cmap="gray_r")
        ax.set_title(f"pred {m['pred']}, true {m['label']}", fontsize=9, color="firebrick")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{name}: {len(wrong)} of {len(labels):,} test digits misclassified (seed {run['seed']}, "
                 f"first 25 shown)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


# -----------------------------------------------------------------------------
# statistics and the report

def finals(result):
    """{seed: final test accuracy} of the runs that did not diverge."""
    return {r["seed"]: r["final_test_acc"] for r in result["runs"] if r["status"] == "ok"}


def paired_interval(a, b):
    """Mean of the paired differences a_i - b_i with its two-sided 95% t-interval (None for one pair)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n < 2:
        return float(d.mean()), None, None
    df = n - 1
    t = T95.get(df) or T95[max(k for k in T95 if k <= df)] if df <= 30 else 1.96
    half = t * d.std(ddof=1) / math.sqrt(n)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def compare(name, result, base):
    """One generated sentence: this variant against `none` over the seeds both have."""
    fa, fb = finals(result), finals(base)
    seeds = sorted(set(fa) & set(fb))
    if not seeds:
        return f"**{name}** shares no finished seed with `none`; no comparison."
    mean, lo, hi = paired_interval([fa[s] for s in seeds], [fb[s] for s in seeds])
    if lo is None:
        return (f"**{name}** − none = {mean:+.2f} points on seed {seeds[0]} alone; with one seed there is no "
                f"interval, so this cannot be told apart from seed-to-seed noise.")
    verdict = ("distinguishable from noise (the interval excludes 0)" if lo > 0 or hi < 0
               else "not distinguishable from noise (the interval contains 0)")
    return (f"**{name}** − none = {mean:+.2f} points, 95% paired t-interval [{lo:+.2f}, {hi:+.2f}] over "
            f"{len(seeds)} seeds: {verdict}.")


def report(results):
    rows = ["| variant | λ1 | λ2 | epochs | final test acc (mean ± std) | min | max | best of mean curve (epoch) "
            "| first epoch ≥ 99.4 | s/epoch (median) | device | seeds |", "|" + "---|" * 12]
    for name, r in results.items():
        cfg, s = r["config"], r["summary"]
        x, acc = curves(r, "test_acc")
        _, secs = curves(r, "seconds")
        mean_curve = np.nanmean(acc, 0)
        best = int(np.nanargmax(mean_curve))
        first = next((i + 1 for i, a in enumerate(mean_curve) if a >= 99.4), None)
        final = (f"{s['final_test_acc_mean']:.2f} ± {s['final_test_acc_std']:.2f}" if s["final_test_acc_mean"] is not None
                 else "diverged")
        if s.get("diverged"):
            final += f" ({len(s['diverged'])} diverged)"
        fmt = lambda v: "–" if v is None else f"{v:.2f}"
        rows.append(f"| {name} | {cfg['l1']:g} | {cfg['l2']:g} | {cfg['epochs']} | {final} | {fmt(s['final_test_acc_min'])} "
                    f"| {fmt(s.get('final_test_acc_max'))} | {mean_curve[best]:.2f} ({best + 1}) | {first or '–'} "
                    f"| {np.nanmedian(secs):.1f} | {r['env']['device']} | {len(finals(r))} |")
    lines = ["# Report", "", "Generated by `python plot.py` from the JSON files beside it; do not edit by hand.",
             "Accuracies in percent; \"final\" is the last epoch of every seed, never a picked epoch. The paired "
             "differences compare each variant with `none` on the same seeds (same initial weights, data order and "
             "augmentation), with a two-sided 95% Student t-interval.", "", *rows, ""]
    for name, r in results.items():
        mean = r["summary"]["final_test_acc_mean"]
        target = ("diverged" if mean is None else f"reaches the 99.40% target at the final epoch (mean {mean:.2f})"
                  if mean >= 99.4 else f"misses the 99.40% target at the final epoch by {99.4 - mean:.3f} points (mean {mean:.3f})")
        line = f"- **{name}** {target}."
        if name != "none" and "none" in results:
            line += " " + compare(name, r, results["none"])
        lines.append(line)
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# the lambda sweep on the validation split (results/sweep/*.json, from `make sweep`)

def sweep_points(folder):
    points = {}
    for name, r in load_results(folder).items():
        cfg = r["config"]
        kind = "none" if not cfg["l1"] and not cfg["l2"] else "l1" if not cfg["l2"] else "l2" if not cfg["l1"] else "l1l2"
        lam = cfg["l1"] if kind == "l1" else cfg["l2"]
        accs = [run["final_test_acc"] if run["status"] == "ok" else float("nan") for run in r["runs"]]
        points[name] = {"penalty": kind, "lambda": lam, "val_acc": accs, "val_acc_mean": float(np.mean(accs)),
                        "val_acc_min": float(np.min(accs)), "val_acc_max": float(np.max(accs)),
                        "seeds": [run["seed"] for run in r["runs"]], "epochs": cfg["epochs"]}
    return points


def plot_sweep(points, path):
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for kind, color in [("l1", "tab:blue"), ("l2", "tab:orange")]:
        pts = sorted((p for p in points.values() if p["penalty"] == kind), key=lambda p: p["lambda"])
        if pts:
            lam = [p["lambda"] for p in pts]
            ax.plot(lam, [p["val_acc_mean"] for p in pts], "o-", color=color, label=f"{kind}: λ·Σ{'|w|' if kind == 'l1' else 'w²'}")
            ax.fill_between(lam, [p["val_acc_min"] for p in pts], [p["val_acc_max"] for p in pts], color=color, alpha=0.2)
    for p in points.values():
        if p["penalty"] == "none":
            ax.axhline(p["val_acc_mean"], color="black", ls="--", lw=1, label="no penalty")
    ax.set(xscale="log", xlabel="λ (log scale)", ylabel="validation accuracy (%)",
           title=f"λ sweep: final validation accuracy, last 10k training images ({next(iter(points.values()))['epochs']} epochs)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


# -----------------------------------------------------------------------------
# main: render everything to temporary files, then rename them all

def render(folder, data_dir):
    results = load_results(folder)
    out = {}  # final path -> temporary path
    def tmp(name):
        out[os.path.join(folder, name)] = os.path.join(folder, f".{name}.tmp{os.getpid()}")
        return out[os.path.join(folder, name)]
    try:
        plot_loss(results, tmp("loss.png"))
        plot_accuracy(results, tmp("accuracy.png"))
        cache = {}
        for name, r in results.items():
            key = (r["config"]["val"], r["config"]["test_limit"])
            cache[key] = cache.get(key) or eval_images(r, data_dir)
            plot_misclassified(name, r, *cache[key], tmp(f"misclassified_{name}.png"))
        with open(tmp("REPORT.md"), "w") as f:
            f.write(report(results))
        sweep_dir = os.path.join(folder, "sweep")
        if glob.glob(os.path.join(sweep_dir, "*.json")):
            points = sweep_points(sweep_dir)
            plot_sweep(points, tmp("sweep.png"))
            with open(tmp("sweep.json"), "w") as f:
                json.dump({"schema": 1, "source": "results/sweep/*.json", "points": points}, f, indent=1, allow_nan=False)
        for final, temp in out.items():
            os.replace(temp, final)
    finally:
        for temp in out.values():
            if os.path.exists(temp):
                os.remove(temp)
    return list(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="plot.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="folder of <variant>.json files; figures go there too")
    p.add_argument("--data", default="data", help="MNIST folder, for the misclassified images")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results):
        p.exit(2, f"{p.prog}: error: --results {args.results} is not a directory\n")
    try:
        written = render(args.results, args.data)
    except (ResultsError, data.DataError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except (KeyError, TypeError, ValueError, IndexError) as e:  # a JSON that parses but lacks what we read
        p.exit(2, f"{p.prog}: error: a results JSON in {args.results} is malformed ({type(e).__name__}: {e})\n")
    print("wrote " + ", ".join(os.path.relpath(w) for w in written))


if __name__ == "__main__":
    main()
