"""Render the study's figures from the results JSON files, as results.py hands them over; the only drawer.

    python plot.py [--results DIR] [--data DIR]      # part of `make plots`, after verify.py and before report.py
writes loss.png, accuracy.png, differences.png, norms.png, weights.png, misclassified_<name>.png (datasize.png and
confirm.png where DIR holds those studies) into DIR. It evaluates nothing: the misclassified digits are the JSON's
lists, shown with the images data.py loads; verify.py checks those lists against the checkpoints.
"""
import program

if __name__ == "__main__":
    program.quiet_until_ready("plot.py")  # Ctrl-C while torch imports: one line; cli.run_tool takes over from there

import io
import os
import sys
import textwrap
import warnings

import matplotlib
matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch

import cli
import confirm
import data
import results
import rules
import stats
from model import NEAR_ZERO
from regularizers import VARIANTS

# a diverged run stops early: its missing epochs are NaN, and an all-NaN column is expected, not an error
warnings.filterwarnings("ignore", "Mean of empty slice|All-NaN slice encountered", RuntimeWarning)
COLORS = dict(zip(VARIANTS, ["black", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red", "tab:brown",
                             "tab:pink"]))


def png(fig, dpi=120):
    """The figure as PNG bytes: results.py writes them, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    return buf.getvalue()


# -----------------------------------------------------------------------------
# curves over epochs

def band(ax, x, arr, label, color):
    """Seed mean as a line; min-max across seeds as a band when there are several."""
    ax.plot(x, np.nanmean(arr, 0), color=color, label=f"{label} (n={len(arr)})", lw=1.6)
    if len(arr) > 1:
        ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), color=color, alpha=0.18, lw=0)


def plot_loss(found):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in [(axes[0], "train_loss", "train loss (data loss, epoch mean)"),
                           (axes[1], "test_loss", f"{stats.split(found)} loss")]:
        for name, r in found.items():
            band(ax, *stats.curves(r, key), name, COLORS.get(r["variant"]))
        ax.set(title=title, xlabel="epoch", yscale="log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("cross-entropy (log scale)")
    axes[1].legend(title="variant, seeds")
    return png(fig)


def plot_accuracy(found):
    fig, ax = plt.subplots(figsize=(9, 5))
    tail, top = [], []
    for name, r in found.items():
        x, arr = stats.curves(r, "test_acc")
        band(ax, x, arr, name, COLORS.get(r["variant"]))
        tail.append(np.nanmin(arr[:, min(2, arr.shape[1] - 1):]))  # zoom past the first two epochs
        top.append(np.nanmax(arr))
    ax.axhline(rules.AIM, ls="--", color="gray", lw=1, label=f"{rules.AIM:.1f}% target")
    lo, hi = np.nanmin(tail), np.nanmax(top)
    ax.set_ylim(max(lo - 0.1, 90) if np.isfinite(lo) else 90, min(max(hi, rules.AIM) + 0.1, 100) if np.isfinite(hi) else 100)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(title=f"{stats.split(found)} accuracy per epoch (seed mean, min-max band)", xlabel="epoch", ylabel=f"{stats.split(found)} accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return png(fig)


def plot_norms(found):
    """One panel per convolution: its weight norm over epochs (seed mean); a last panel: the effective step of the
    scale-invariant layers relative to none's (stats.step_ratio), the ratio the README states."""
    have = {name: stats.norm_curves(r) for name, r in found.items()}
    have = {name: c for name, c in have.items() if c}
    if not have:
        return None
    fig, axes = plt.subplots(2, 5, figsize=(17, 6.8), sharex=True)
    for name, norms in have.items():
        x, c = np.arange(1, norms["conv1"].shape[1] + 1), COLORS.get(found[name]["variant"])
        for ax, k in zip(axes.flat, stats.LAYERS):
            ax.plot(x, np.nanmean(norms[k], 0), color=c, lw=1.4, label=f"{name} (n={len(norms[k])})")
        ratio = stats.step_ratio(found[name], found[rules.BASE]) if rules.BASE in have else None
        if ratio is not None:
            axes.flat[9].plot(x, ratio, color=c, lw=1.4)
    for ax, k in zip(axes.flat, stats.LAYERS):
        ax.set_title(f"{k}: ‖w‖₂" + ("" if k in stats.SCALE_INVARIANT else " (classifier, scale matters)"), fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[9].set(yscale="log", title=f"effective step lr / Σ₁₋₈ ‖w‖², ÷ {rules.BASE}'s (log)")
    axes.flat[9].title.set_fontsize(10)
    axes.flat[9].grid(alpha=0.3, which="both")
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.flat[0].legend(fontsize=8)
    skipped = [name for name in found if name not in have]
    fig.suptitle("weight norm of each convolution at the end of each epoch (seed mean)"
                 + (f"\nnot shown (their epochs record no weight_norm): {', '.join(skipped)}" if skipped else ""), fontsize=11)
    return png(fig)


# -----------------------------------------------------------------------------
# final weights, misclassified digits, paired differences

def plot_weights(found, weights):
    """Histogram of all final convolution weights per variant (seeds pooled, counts per model), same bins for all:
    left |w|, right |w| relative to its layer's largest |w|, where the near-zero rule is a line."""
    absw, rel, seeds, label = {}, {}, {}, {}
    for name, r in found.items():
        convs = [[w.double().abs() for w in ws] for ws in weights[name]]
        if not convs:
            continue
        absw[name] = torch.cat([w.flatten() for ws in convs for w in ws]).numpy()
        rel[name] = torch.cat([(w / w.max()).nan_to_num(0.0).flatten() for ws in convs for w in ws]).numpy()  # 0/0: a zero layer
        seeds[name] = len(convs)
        nz = [run["near_zero_fraction"] for run in stats.ok_runs(r) if run.get("near_zero_fraction") is not None]
        label[name] = f"{name} (n={len(convs)})" + (f": {100 * np.mean(nz):.1f}% near zero" if nz else "")
    if not absw:
        return None
    top = max(a.max() for a in absw.values())
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), sharey=True)
    for ax, vals, bins in [(axes[0], absw, np.logspace(np.log10(top) - 6, np.log10(top), 61)),
                           (axes[1], rel, np.logspace(-6, 0, 61))]:
        for name, v in vals.items():  # values below the first bin (exact zeros too) count in the first bin
            ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, weights=np.full(len(v), 1 / seeds[name]),
                    histtype="step", lw=1.5, color=COLORS.get(found[name]["variant"]), label=label[name])
        ax.set(xscale="log", yscale="log")
        ax.grid(alpha=0.3, which="both")
    axes[1].axvline(NEAR_ZERO, color="gray", ls="--", lw=1)
    axes[0].set(xlabel="|w|  (leftmost bin: this or smaller, exact zeros included)", ylabel="weights per model (log scale)",
                title="final convolution weights, conv1..conv9 pooled")
    axes[1].set(xlabel="|w| / largest |w| of its layer",
                title=f"near zero = |w| < {NEAR_ZERO:.0%} of its layer's largest |w| (dashed line)")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="variant (seeds):\nnear zero, JSON mean",
                   title_fontsize=8)
    return png(fig)


def plot_misclassified(name, result, images, labels):
    """5x5 grid of the first 25 digits the first finished seed misclassified, as its JSON lists them (verify.py
    checks the lists against the checkpoints); None when every seed diverged."""
    if not stats.ok_runs(result):
        return None
    run = stats.ok_runs(result)[0]
    fig, axes = plt.subplots(5, 5, figsize=(6.5, 7.2))
    for ax, m in zip(axes.flat, run["misclassified"][:25]):
        ax.imshow(images[m["index"]].numpy(), cmap="gray_r")
        ax.set_title(f"pred {m['pred']}, true {m['label']}", fontsize=9, color="firebrick")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{name}: {len(run['misclassified'])} of {len(labels):,} {stats.split({name: result})} digits misclassified "
                 f"(seed {run['seed']}, first 25 shown)", fontsize=10)
    return png(fig, dpi=100)


def plot_differences(found, paired):
    """Per variant: final accuracy minus none's on the same seed (dots), mean and 95% paired t-interval."""
    shown = {name: p for name, p in paired.items() if not isinstance(p, str)}
    fig, ax = plt.subplots(figsize=(max(6.5, 1.4 * len(shown) + 3), 4.8))
    ax.axhline(0, color="gray", lw=1)
    for x, (name, (seeds, diffs)) in enumerate(shown.items()):
        c = COLORS.get(found[name]["variant"])
        jitter = np.linspace(-0.12, 0.12, len(diffs)) if len(diffs) > 1 else [0.0]
        ax.scatter(x + np.asarray(jitter), diffs, s=22, color=c, alpha=0.7, zorder=3)
        mean, lo, hi = stats.interval(diffs)
        if lo is None:
            ax.plot([x + 0.22], [mean], "_", ms=16, mew=2, color=c)
            ax.annotate("1 seed:\nno interval", (x + 0.22, mean), xytext=(0, -8), textcoords="offset points",
                        fontsize=8, ha="center", va="top")
        else:
            ax.errorbar([x + 0.22], [mean], yerr=[[mean - lo], [hi - mean]], fmt="_", ms=16, mew=2, capsize=5, color=c)
    ax.set_xticks(range(len(shown)), [f"{n}\n({len(p[0])} seed{'s' if len(p[0]) > 1 else ''})" for n, p in shown.items()])
    ax.set_xlim(-0.6, max(len(shown), 1) - 0.4)
    ax.set(ylabel=f"final {stats.split(found)} acc − {rules.BASE}, same seed (points)",
           title=f"final {stats.split(found)} accuracy minus {rules.BASE}'s on the same seed\ndots: seeds; bar: mean and 95% paired t-interval")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, axis="y")
    left_out = [p for p in paired.values() if isinstance(p, str)]
    if left_out:  # as the axis label, so that tight_layout makes room for it
        ax.set_xlabel(textwrap.fill("left out: " + "; ".join(left_out), 90), fontsize=8)
    return png(fig)


def plot_datasize(rows):
    """The data-size study: final test accuracy and loss against the training-set size (seed mean, min-max band),
    and each penalty's paired difference from none with its 95% interval, for accuracy and for loss."""
    fig = plt.figure(figsize=(17, 5.4))
    grid = fig.add_gridspec(2, 3)
    ax_acc, ax_loss = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[:, 1])
    ax_dacc, ax_dloss = fig.add_subplot(grid[0, 2]), fig.add_subplot(grid[1, 2])
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for i, name in enumerate(variants):
        mine = [r for r in rows if r["variant"] == name]
        x = np.array([r["size"] for r in mine], dtype=float)
        for ax, key in ((ax_acc, "acc"), (ax_loss, "loss")):
            ax.plot(x, [r[f"{key}_mean"] for r in mine], "o-", color=COLORS.get(name), label=name, lw=1.6)
            ax.fill_between(x, [r[f"{key}_min"] for r in mine], [r[f"{key}_max"] for r in mine],
                            color=COLORS.get(name), alpha=0.15, lw=0)
        for ax, key in ((ax_dacc, "acc"), (ax_dloss, "loss")):
            shown = [r for r in mine if r[f"{key}_lo"] is not None]
            if shown:  # side by side around each size, so the intervals do not hide each other
                xs = np.array([r["size"] for r in shown]) * 1.12 ** (i - 2)
                d = np.array([r[f"{key}_diff"] for r in shown])
                ax.errorbar(xs, d, yerr=[d - [r[f"{key}_lo"] for r in shown], [r[f"{key}_hi"] for r in shown] - d],
                            fmt="o", ms=4, capsize=3, color=COLORS.get(name), label=name)
    for ax, title in ((ax_acc, "final test accuracy (%)"), (ax_loss, "final test loss"),
                      (ax_dacc, f"accuracy − {rules.BASE}, same seeds (95% interval)"),
                      (ax_dloss, f"loss − {rules.BASE}, same seeds (95% interval)")):
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in (ax_dacc, ax_dloss):
        ax.axhline(0, color="gray", lw=1)
    for ax in (ax_acc, ax_loss, ax_dloss):
        ax.set_xlabel("training images (log scale)")
    ax_acc.legend(title="variant (seed mean, min-max band)", fontsize=8)
    passes = ", ".join(f"{r['passes']:g} at {r['size']:,}" for r in rows if r["variant"] == rules.BASE)
    fig.suptitle("When do the penalties help? The same 9,375 steps at every size, so passes over the data fall with "
                 f"size ({passes}); λ chosen per size on the validation split", fontsize=11)
    return png(fig)


def plot_confirm(settled):
    """The confirmatory study, once a study is complete: each contrast of its plan's family with its 95% interval
    and the equivalence band; for the mechanism control, the four arms' test loss over the step budget. None while
    neither study is complete (no contrast is drawn before every seed of the plan is in)."""
    done = [k for k in ("main", "mechanism") if settled[k]["contrasts"]]
    if not done:
        return None
    panels = len(done) + ("mechanism" in done)  # the mechanism's curves, then each study's contrasts
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.8), squeeze=False)
    axes, margins = list(axes[0]), {"main": rules.CONFIRM_MARGIN, "mechanism": rules.MECHANISM_MARGIN}
    for study in done:
        s, ax = settled[study], axes.pop(0)
        if study == "mechanism":  # the arms' curves first: what the contrasts summarise
            for name, r in s["found"].items():
                x, arr = stats.curves(r, "test_loss")
                band(ax, x, arr, name, COLORS.get(name))
            ax.set(title="1,000 images: test loss per evaluation (seed mean, min-max)", xlabel="evaluation (of 15)",
                   ylabel="test loss", yscale="log")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
            ax = axes.pop(0)
        m = margins[study]
        ax.axhspan(-m, m, color="gray", alpha=0.15, lw=0, label=f"equal within ±{m:g}")
        ax.axhline(0, color="gray", lw=1)
        for x, ((a, b), c) in enumerate(s["contrasts"].items()):
            ax.errorbar([x], [c["mean"]], yerr=[[c["mean"] - c["lo"]], [c["hi"] - c["mean"]]], fmt="o", capsize=5,
                        color="black" if c["reject"] else "tab:blue")
        ax.set_xticks(range(len(s["contrasts"])), [f"{a}\n− {b}" for a, b in s["contrasts"]], fontsize=8)
        what = "final test accuracy (points)" if study == "main" else "final test loss"
        ax.set(title=f"{'60,000 images, 15 epochs' if study == 'main' else '1,000 images'}: {what}, 95% interval"
                     f"\n(black: Holm rejects 0)", ylabel="difference")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("The confirmatory study: the plan's contrasts (results/confirm/plan.json)", fontsize=11)
    return png(fig)


# -----------------------------------------------------------------------------
# main: render every figure in memory, then hand them to results.py to write

def render(folder, data_dir):
    """{file name: PNG bytes} of every figure the folder's results can show."""
    found = results.load_folder(folder)
    mnist = data.load_mnist(data_dir, log=lambda s: None)
    weights = {name: results.conv_weights(folder, r) for name, r in found.items()}
    paired = stats.pairs(found)
    figures = {"loss.png": plot_loss(found), "accuracy.png": plot_accuracy(found), "norms.png": plot_norms(found),
               "weights.png": plot_weights(found, weights),
               "differences.png": plot_differences(found, paired) if paired else None}
    for name, r in found.items():
        images = data.eval_split(mnist, r["config"]["val"], r["config"]["test_limit"])
        figures[f"misclassified_{name}.png"] = plot_misclassified(name, r, *images)
    study = results.load_datasize(folder)
    if study:
        figures["datasize.png"] = plot_datasize(stats.datasize_rows(study))
    settled = confirm.reading(folder)
    if settled:
        figures["confirm.png"] = plot_confirm(settled)
    return {name: blob for name, blob in figures.items() if blob is not None}


def main(argv=None):
    p = cli.tool_parser("plot.py", __doc__, "folder of <name>.json files; figures go there too (default: the "
                            "repository's results/)", "MNIST folder, for the misclassified images (default: the "
                            "repository's data/)")
    args = p.parse_args(argv)
    written = cli.run_tool(p, args, lambda: results.write_files(args.results, render(args.results, args.data)))
    print("wrote " + ", ".join(os.path.relpath(w) for w in written))


if __name__ == "__main__":
    sys.exit(main())
