"""Render the study's figures and REPORT.md from results/*.json (and the checkpoints they name) alone; the only drawer.

    python plot.py [--results DIR] [--data DIR]
    python plot.py --verify [--results DIR]    # re-evaluate every checkpoint against its JSON (make verify)
writes loss.png, accuracy.png, differences.png, norms.png, weights.png, misclassified_<name>.png and REPORT.md
(and sweep.png + sweep.json when DIR/sweep/ holds validation runs) into DIR, by default the repository's results/.
Everything is rendered to temporary files first, then renamed.
"""
import argparse
import glob
import os
import textwrap
import warnings

import matplotlib
matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch

import data
import results
from model import NEAR_ZERO, Net
from regularizers import VARIANTS

# a diverged run stops early: its missing epochs are NaN, and an all-NaN column is expected, not an error
warnings.filterwarnings("ignore", "Mean of empty slice|All-NaN slice encountered", RuntimeWarning)
COLORS = dict(zip(VARIANTS, ["black", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]))
BASE = "none"  # every paired difference is taken against this results file
# the study's targets for the five-seed mean at the final epoch: BatchNorm variants 99.45%, Ghost BN 99.40%
TARGETS = {"bn": 99.45, "gbn": 99.40}
LAYERS = [f"conv{i}" for i in range(1, 10)]
# conv1..conv8 feed ReLU -> BatchNorm, so the output ignores their scale; conv9 (the classifier) does not
SCALE_INVARIANT = LAYERS[:-1]


def curves(result, key):
    """(epochs,) and (seeds, epochs) array of one metric; NaN where a run diverged or stopped early."""
    n = result["config"]["epochs"]
    arr = np.full((len(result["runs"]), n), np.nan)
    for i, run in enumerate(result["runs"]):
        for e in run["epochs"]:
            arr[i, e["epoch"] - 1] = np.nan if e[key] is None else e[key]
    return np.arange(1, n + 1), arr


def color(result):
    return COLORS.get(result["variant"])


def save(fig, path, dpi=120):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)


# -----------------------------------------------------------------------------
# curves over epochs

def band(ax, x, arr, label, color):
    """Seed mean as a line; min-max across seeds as a band when there are several."""
    ax.plot(x, np.nanmean(arr, 0), color=color, label=f"{label} (n={len(arr)})", lw=1.6)
    if len(arr) > 1:
        ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), color=color, alpha=0.18, lw=0)


def plot_loss(found, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in [(axes[0], "train_loss", "train loss (data loss, epoch mean)"),
                           (axes[1], "test_loss", "test loss")]:
        for name, r in found.items():
            band(ax, *curves(r, key), name, color(r))
        ax.set(title=title, xlabel="epoch", yscale="log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("cross-entropy (log scale)")
    axes[1].legend(title="variant, seeds")
    save(fig, path)


def plot_accuracy(found, path):
    fig, ax = plt.subplots(figsize=(9, 5))
    tail, top = [], []
    for name, r in found.items():
        x, arr = curves(r, "test_acc")
        band(ax, x, arr, name, color(r))
        tail.append(np.nanmin(arr[:, min(2, arr.shape[1] - 1):]))  # zoom past the first two epochs
        top.append(np.nanmax(arr))
    ax.axhline(99.4, ls="--", color="gray", lw=1, label="99.4% target")
    lo, hi = np.nanmin(tail), np.nanmax(top)
    ax.set_ylim(max(lo - 0.1, 90) if np.isfinite(lo) else 90, min(max(hi, 99.4) + 0.1, 100) if np.isfinite(hi) else 100)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(title="test accuracy per epoch (seed mean, min-max band)", xlabel="epoch", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save(fig, path)


def norm_curves(result):
    """{layer: (seeds, epochs)} weight norms and (seeds, epochs) lr of the runs whose epochs record weight_norm."""
    runs = [run for run in result["runs"] if run["epochs"] and all("weight_norm" in e for e in run["epochs"])]
    n = result["config"]["epochs"]
    norms, lr = {k: np.full((len(runs), n), np.nan) for k in LAYERS}, np.full((len(runs), n), np.nan)
    for i, run in enumerate(runs):
        for e in run["epochs"]:
            lr[i, e["epoch"] - 1] = e["lr"]
            for k in LAYERS:
                norms[k][i, e["epoch"] - 1] = np.nan if e["weight_norm"].get(k) is None else e["weight_norm"][k]
    return norms, lr


def plot_norms(found, path):
    """One panel per convolution: its weight norm over epochs (seed mean); a last panel: the effective step."""
    have = {name: norm_curves(r) for name, r in found.items()}
    have = {name: c for name, c in have.items() if len(c[1])}
    if not have:
        return False
    fig, axes = plt.subplots(2, 5, figsize=(17, 6.8), sharex=True)
    for name, (norms, lr) in have.items():
        x, c = np.arange(1, lr.shape[1] + 1), color(found[name])
        for ax, k in zip(axes.flat, LAYERS):
            ax.plot(x, np.nanmean(norms[k], 0), color=c, lw=1.4, label=f"{name} (n={len(lr)})")
        # lr / ||w||^2 is the step a scale-invariant layer effectively takes (van Laarhoven 2017)
        step = lr / sum(norms[k] ** 2 for k in SCALE_INVARIANT)
        axes.flat[9].plot(x, np.nanmean(step, 0), color=c, lw=1.4)
    for ax, k in zip(axes.flat, LAYERS):
        ax.set_title(f"{k}: ‖w‖₂" + ("" if k in SCALE_INVARIANT else " (classifier, scale matters)"), fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[9].set(yscale="log", title="effective step  lr / Σ₁₋₈ ‖w‖²  (log)")
    axes.flat[9].title.set_fontsize(10)
    axes.flat[9].grid(alpha=0.3, which="both")
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.flat[0].legend(fontsize=8)
    skipped = [name for name in found if name not in have]
    fig.suptitle("weight norm of each convolution at the end of each epoch (seed mean)"
                 + (f"\nnot shown (their epochs record no weight_norm): {', '.join(skipped)}" if skipped else ""), fontsize=11)
    save(fig, path)
    return True


# -----------------------------------------------------------------------------
# checkpoints: final weights, and the misclassified digits they produce

def load_weights(run):
    """A run's final state_dict, from the checkpoint its JSON names (relative to the repository root)."""
    ckpt = os.path.join(results.REPO, run["checkpoint"])
    if not os.path.exists(ckpt):
        raise results.ResultsError(f"{ckpt}: checkpoint named by the JSON is missing")
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def ok_runs(result):
    return [run for run in result["runs"] if run["status"] == "ok"]


def plot_weights(found, path):
    """Histogram of all final convolution weights per variant (seeds pooled, counts per model), same bins for all:
    left |w|, right |w| relative to its layer's largest |w|, where the near-zero rule is a line."""
    absw, rel, seeds, label = {}, {}, {}, {}
    for name, r in found.items():
        convs = [[w.double().abs() for w in load_weights(run).values() if w.dim() == 4] for run in ok_runs(r)]
        if not convs:
            continue
        absw[name] = torch.cat([w.flatten() for ws in convs for w in ws]).numpy()
        rel[name] = torch.cat([(w / w.max()).nan_to_num(0.0).flatten() for ws in convs for w in ws]).numpy()  # 0/0: a zero layer
        seeds[name] = len(convs)
        nz = [run["near_zero_fraction"] for run in ok_runs(r) if run.get("near_zero_fraction") is not None]
        label[name] = f"{name} (n={len(convs)})" + (f": {100 * np.mean(nz):.1f}% near zero" if nz else "")
    if not absw:
        return False
    top = max(a.max() for a in absw.values())
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), sharey=True)
    for ax, vals, bins in [(axes[0], absw, np.logspace(np.log10(top) - 6, np.log10(top), 61)),
                           (axes[1], rel, np.logspace(-6, 0, 61))]:
        for name, v in vals.items():  # values below the first bin (exact zeros too) count in the first bin
            ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, weights=np.full(len(v), 1 / seeds[name]),
                    histtype="step", lw=1.5, color=color(found[name]), label=label[name])
        ax.set(xscale="log", yscale="log")
        ax.grid(alpha=0.3, which="both")
    axes[1].axvline(NEAR_ZERO, color="gray", ls="--", lw=1)
    axes[0].set(xlabel="|w|  (leftmost bin: this or smaller, exact zeros included)", ylabel="weights per model (log scale)",
                title="final convolution weights, conv1..conv9 pooled")
    axes[1].set(xlabel="|w| / largest |w| of its layer",
                title=f"near zero = |w| < {NEAR_ZERO:.0%} of its layer's largest |w| (dashed line)")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="variant (seeds):\nnear zero, JSON mean",
                   title_fontsize=8)
    save(fig, path)
    return True


@torch.no_grad()
def predict(result, run, images):
    """Predictions of a run's checkpoint, evaluated as train.py evaluates: fp32, its eval batch and memory format."""
    cfg = result["config"]
    net = Net(cfg["dropout"], cfg["norm"], cfg["virtual_batch"])
    net.load_state_dict(load_weights(run))
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    net = net.to(memory_format=fmt).eval()
    batch = cfg.get("eval_batch_size", cfg["batch_size"])  # files before eval_batch_size evaluated in training batches
    return torch.cat([net(data.to_float(images[i:i + batch], cfg["normalize"]).contiguous(memory_format=fmt)).argmax(1)
                      for i in range(0, len(images), batch)])


def eval_images(result, data_dir):
    """The images a run was evaluated on: the test set, or the validation split for a --val run."""
    train_x, train_y, test_x, test_y = data.load_mnist(data_dir, log=lambda s: None)
    cfg = result["config"]
    x, y = (train_x[50000:], train_y[50000:]) if cfg["val"] else (test_x, test_y)
    return (x[:cfg["test_limit"]], y[:cfg["test_limit"]]) if cfg["test_limit"] else (x, y)


def misclassified(result, run, images, labels):
    """Indices of the images a run's checkpoint gets wrong, re-evaluated now."""
    return (predict(result, run, images) != labels.long()).nonzero().flatten().tolist()


def verify(folder, data_dir):
    """Every checkpoint named in folder re-evaluated: (lines to print, number of runs whose final accuracy or
    misclassified list differs from their JSON's)."""
    lines, bad, cache = [], 0, {}
    for name, r in results.load_folder(folder).items():
        key = (r["config"]["val"], r["config"]["test_limit"])
        images, labels = cache[key] = cache.get(key) or eval_images(r, data_dir)
        for run in ok_runs(r):
            wrong = misclassified(r, run, images, labels)
            acc = 100.0 * (len(labels) - len(wrong)) / len(labels)  # as loop.evaluate computes it
            same = acc == run["final_test_acc"] and wrong == [m["index"] for m in run["misclassified"]]
            bad += not same
            lines.append(f"{name} seed {run['seed']}: {run['checkpoint']} -> {acc:.2f}% "
                         f"({'equals' if same else 'DIFFERS FROM'} the JSON's {run['final_test_acc']:.2f}%)")
    return lines, bad


def plot_misclassified(name, result, images, labels, path):
    """5x5 grid of the first 25 misclassified images of the first seed; every seed's list is checked against
    its checkpoint first. False (no grid) when every seed diverged."""
    for run in ok_runs(result):
        wrong = misclassified(result, run, images, labels)
        if wrong != [m["index"] for m in run["misclassified"]]:
            raise results.ResultsError(f"{name}.json: misclassified list of seed {run['seed']} disagrees with "
                                       f"{run['checkpoint']} ({len(run['misclassified'])} listed, {len(wrong)} found)")
    if not ok_runs(result):
        return False
    run = ok_runs(result)[0]
    fig, axes = plt.subplots(5, 5, figsize=(6.5, 7.2))
    for ax, m in zip(axes.flat, run["misclassified"][:25]):
        ax.imshow(images[m["index"]].numpy(), cmap="gray_r")
        ax.set_title(f"pred {m['pred']}, true {m['label']}", fontsize=9, color="firebrick")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{name}: {len(run['misclassified'])} of {len(labels):,} test digits misclassified "
                 f"(seed {run['seed']}, first 25 shown)", fontsize=10)
    save(fig, path, dpi=100)
    return True


# -----------------------------------------------------------------------------
# paired differences against `none`, as a figure and as sentences

def pairs(found):
    """{name: (seeds, differences) or the reason it cannot be paired with `none`}, for every other file."""
    out = {}
    for name, r in found.items():
        if name == BASE:
            continue
        try:
            seeds, diffs = results.paired(r, found[BASE])
            out[name] = (seeds, diffs) if seeds else f"{name} shares no finished seed with {BASE}"
        except results.ResultsError as e:
            out[name] = str(e)
    return out


def plot_differences(found, paired, path):
    """Per variant: final accuracy minus none's on the same seed (dots), mean and 95% paired t-interval."""
    shown = {name: p for name, p in paired.items() if not isinstance(p, str)}
    fig, ax = plt.subplots(figsize=(max(6.5, 1.4 * len(shown) + 3), 4.8))
    ax.axhline(0, color="gray", lw=1)
    for x, (name, (seeds, diffs)) in enumerate(shown.items()):
        c = color(found[name])
        jitter = np.linspace(-0.12, 0.12, len(diffs)) if len(diffs) > 1 else [0.0]
        ax.scatter(x + np.asarray(jitter), diffs, s=22, color=c, alpha=0.7, zorder=3)
        mean, lo, hi = results.paired_interval(diffs, [0.0] * len(diffs))
        if lo is None:
            ax.plot([x + 0.22], [mean], "_", ms=16, mew=2, color=c)
            ax.annotate("1 seed:\nno interval", (x + 0.22, mean), xytext=(0, -8), textcoords="offset points",
                        fontsize=8, ha="center", va="top")
        else:
            ax.errorbar([x + 0.22], [mean], yerr=[[mean - lo], [hi - mean]], fmt="_", ms=16, mew=2, capsize=5, color=c)
    ax.set_xticks(range(len(shown)), [f"{n}\n({len(p[0])} seed{'s' if len(p[0]) > 1 else ''})" for n, p in shown.items()])
    ax.set_xlim(-0.6, max(len(shown), 1) - 0.4)
    ax.set(ylabel=f"final test acc − {BASE}, same seed (points)",
           title=f"final test accuracy minus {BASE}'s on the same seed\ndots: seeds; bar: mean and 95% paired t-interval")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, axis="y")
    left_out = [p for p in paired.values() if isinstance(p, str)]
    if left_out:  # as the axis label, so that tight_layout makes room for it
        ax.set_xlabel(textwrap.fill("left out: " + "; ".join(left_out), 90), fontsize=8)
    save(fig, path)


def compare(name, p):
    """One generated sentence: this variant against `none` over the seeds both have, or why there is none."""
    if isinstance(p, str):
        return f"**{name}** is not compared with {BASE}: {p}."
    seeds, diffs = p
    mean, lo, hi = results.paired_interval(diffs, [0.0] * len(diffs))
    if lo is None:
        return (f"**{name}** − {BASE} = {mean:+.2f} points on seed {seeds[0]} alone; with one seed there is no "
                f"interval, so this cannot be told apart from seed-to-seed noise.")
    verdict = ("distinguishable from noise (the interval excludes 0)" if lo > 0 or hi < 0
               else "not distinguishable from noise (the interval contains 0)")
    return (f"**{name}** − {BASE} = {mean:+.2f} points, 95% paired t-interval [{lo:+.2f}, {hi:+.2f}] over "
            f"{len(seeds)} seeds: {verdict}.")


def report(found, paired, recipe=None):
    rows = ["| variant | λ1 | λ2 | epochs | final test acc (mean ± std) | min | max | − none, 95% paired interval "
            "| best of mean curve (epoch) | first epoch ≥ 99.4 | s/epoch (median) | device | seeds |", "|" + "---|" * 13]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"
    for name, r in found.items():
        cfg, s = r["config"], r["summary"]
        _, acc = curves(r, "test_acc")
        _, secs = curves(r, "seconds")
        mean_curve = np.nanmean(acc, 0)
        best = int(np.nanargmax(mean_curve))
        first = next((i + 1 for i, a in enumerate(mean_curve) if a >= 99.4), None)
        n = len(results.finals(r))
        final = ("diverged" if s["final_test_acc_mean"] is None else f"{s['final_test_acc_mean']:.2f} (1 seed)" if n == 1
                 else f"{s['final_test_acc_mean']:.2f} ± {s['final_test_acc_std']:.2f}")
        if s.get("diverged"):
            final += f" ({len(s['diverged'])} diverged)"
        device = (r.get("env") or r["runs"][-1].get("env") or {}).get("device", "?")
        rows.append(f"| {name} | {cfg['l1']:g} | {cfg['l2']:g} | {cfg['epochs']} | {final} | {fmt(s['final_test_acc_min'])} "
                    f"| {fmt(s.get('final_test_acc_max'))} | {interval(paired.get(name))} | {mean_curve[best]:.2f} ({best + 1}) "
                    f"| {first or '–'} "
                    f"| {np.nanmedian(secs):.1f} | {device} | {n} |")
    lines = ["# Report", "", "Generated by `python plot.py` from the JSON files beside it; do not edit by hand.",
             "Accuracies in percent; \"final\" is the last epoch of every seed, never a picked epoch. The paired "
             f"differences compare each variant with `{BASE}` on the same seeds (same initial weights, data order and "
             "augmentation), with a two-sided 95% Student t-interval; only runs whose configs differ in nothing but "
             "the penalty and the norm are compared.", "", *rows, ""]
    for name, r in found.items():
        mean, goal = r["summary"]["final_test_acc_mean"], TARGETS[r["config"]["norm"]]
        target = ("" if mean is None else f"; reaches the {goal:.2f}% target (mean, final epoch)" if mean >= goal
                  else f"; misses the {goal:.2f}% target (mean, final epoch) by {goal - mean:.3f} points")
        low = [s for s, a in results.finals(r).items() if a < 99.4]
        seeds = f" {len(low)} of {len(results.finals(r))} seeds end below 99.40%" + (f" ({low})" if low else "")
        line = f"- **{name}**: final test accuracy {results.describe(r['summary'])}{target};{seeds}."
        if name in paired:
            line += " " + compare(name, paired[name])
        lines.append(line)
    return "\n".join(lines + selection(recipe)) + "\n"


def interval(p):
    """A table cell: 'mean [lo, hi]' of the paired differences with none, or '–' where there is none."""
    if p is None or isinstance(p, str):
        return "–"
    mean, lo, hi = results.paired_interval(p[1], [0.0] * len(p[1]))
    return f"{mean:+.2f}" + ("" if lo is None else f" [{lo:+.2f}, {hi:+.2f}]")


def selection(recipe):
    """REPORT.md's last section: the recipe search and the lambda step on the validation split (recipe.json)."""
    if not recipe:
        return []
    base = recipe["candidates"][0]["config"]
    per_seed = lambda c: ", ".join(f"{a:.2f}" for a in c["val_acc"])
    lines = ["", "## How the recipe and the λ's were chosen (validation split only)", "",
             "Trained on the first 50,000 training images, scored on the last 10,000 (final epoch); the test set "
             f"was not used. Rule, fixed before any candidate ran: {recipe['rule']}.", "",
             "| candidate | differs from the first by | seeds | val acc per seed | mean |", "|---|---|---|---|---|"]
    for c in recipe["candidates"]:
        diff = ", ".join(results.differences(base, c["config"], ignore=("name",))) or "–"
        chosen = " (chosen)" if c["name"] == recipe["chosen"] else ""
        lines.append(f"| {c['name']}{chosen} | {diff} | {len(c['val_acc'])} | {per_seed(c)} | {c['val_acc_mean']:.3f} |")
    if recipe.get("lambdas"):
        lines += ["", f"λ under the chosen recipe; rule: {recipe['lambda_rule']}.", "",
                  "| penalty | λ | seeds | val acc per seed | mean |", "|---|---|---|---|---|"]
        lines += [f"| {p['penalty']} | {p['lambda']:g} | {len(p['val_acc'])} | {per_seed(p)} | {p['val_acc_mean']:.3f} |"
                  for p in recipe["lambda_points"]]
        lines += ["", "Chosen: " + ", ".join(f"{k} = {'none passed' if v is None else f'{v:g}'}"
                                             for k, v in recipe["lambdas"].items()) + "."]
    return lines


# -----------------------------------------------------------------------------
# the lambda sweep on the validation split (results/sweep/*.json, from `make sweep`)

def plot_sweep(points, path):
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for kind, c in [("l1", "tab:blue"), ("l2", "tab:orange")]:
        pts = sorted((p for p in points.values() if p["penalty"] == kind), key=lambda p: p["lambda"])
        if pts:
            lam = [p["lambda"] for p in pts]
            ax.plot(lam, [p["val_acc_mean"] for p in pts], "o-", color=c, label=f"{kind}: λ·Σ{'|w|' if kind == 'l1' else 'w²'}")
            ax.fill_between(lam, [p["val_acc_min"] for p in pts], [p["val_acc_max"] for p in pts], color=c, alpha=0.2)
    for p in points.values():
        if p["penalty"] == "none":
            ax.axhline(p["val_acc_mean"], color="black", ls="--", lw=1, label="no penalty")
    ax.set(xscale="log", xlabel="λ (log scale)", ylabel="validation accuracy (%)",
           title=f"λ sweep: final validation accuracy, last 10k training images ({next(iter(points.values()))['epochs']} epochs)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save(fig, path)


# -----------------------------------------------------------------------------
# main: render everything to temporary files, then rename them all

def render(folder, data_dir):
    found = results.load_folder(folder)
    out = {}  # final path -> temporary path

    def tmp(name):
        out[os.path.join(folder, name)] = os.path.join(folder, f".{name}.tmp{os.getpid()}")
        return out[os.path.join(folder, name)]

    def unless(wrote, name):  # a figure with nothing to show was not written: nothing to rename
        if not wrote:
            out.pop(os.path.join(folder, name))
    try:
        plot_loss(found, tmp("loss.png"))
        plot_accuracy(found, tmp("accuracy.png"))
        unless(plot_norms(found, tmp("norms.png")), "norms.png")
        unless(plot_weights(found, tmp("weights.png")), "weights.png")
        paired = pairs(found) if BASE in found else {}
        if paired:
            plot_differences(found, paired, tmp("differences.png"))
        cache = {}
        for name, r in found.items():
            key = (r["config"]["val"], r["config"]["test_limit"])
            cache[key] = cache.get(key) or eval_images(r, data_dir)
            unless(plot_misclassified(name, r, *cache[key], tmp(f"misclassified_{name}.png")), f"misclassified_{name}.png")
        with open(tmp("REPORT.md"), "w") as f:
            f.write(report(found, paired, results.load_recipe(folder)))
        sweep_dir = os.path.join(folder, "sweep")
        if glob.glob(os.path.join(glob.escape(sweep_dir), "*.json")):
            points = results.sweep_points(sweep_dir)
            plot_sweep(points, tmp("sweep.png"))
            results.write_json(tmp("sweep.json"), {"schema": 1, "source": "results/sweep/*.json", "points": points})
        for final, temp in out.items():
            os.replace(temp, final)
    finally:
        for temp in out.values():
            if os.path.exists(temp):
                os.remove(temp)
    return list(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="plot.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=os.path.join(results.REPO, "results"),
                   help="folder of <name>.json files; figures go there too (default: the repository's results/)")
    p.add_argument("--data", default=data.DEFAULT_ROOT,
                   help="MNIST folder, for the misclassified images (default: the repository's data/)")
    p.add_argument("--verify", action="store_true",
                   help="draw nothing: re-evaluate every checkpoint and compare with its JSON (exit 1 if any differs)")
    return p.parse_args(argv), p


def main(argv=None):
    args, p = parse_args(argv)
    if not os.path.isdir(args.results):
        p.exit(2, f"{p.prog}: error: --results {args.results} is not a directory\n")
    if not os.path.isdir(args.data) and args.data != data.DEFAULT_ROOT:  # a typo must not download MNIST into a new folder
        p.exit(2, f"{p.prog}: error: --data {args.data} is not a directory; run `python data.py --data {args.data}` "
                  f"to fetch MNIST there\n")
    try:
        if args.verify:
            lines, bad = verify(args.results, args.data)
            print("\n".join(lines))
            if bad:
                p.exit(1, f"{p.prog}: error: {bad} of {len(lines)} checkpoints do not re-evaluate to their JSON\n")
            print(f"all {len(lines)} checkpoints re-evaluate to their JSON's final accuracy and misclassified list")
            return
        written = render(args.results, args.data)
    except (results.ResultsError, data.DataError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except (KeyError, TypeError, ValueError, IndexError) as e:  # a JSON that parses but lacks what we read
        p.exit(2, f"{p.prog}: error: a results JSON in {args.results} is malformed ({type(e).__name__}: {e})\n")
    print("wrote " + ", ".join(os.path.relpath(w) for w in written))


if __name__ == "__main__":
    main()
