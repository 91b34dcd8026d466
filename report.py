"""Write REPORT.md, epochs.csv (and sweep.json, when the folder holds a λ sweep) from the results JSON files alone:
the table, the contrasts against none with Holm's correction per family (rules.FAMILIES), one sentence per variant
against the study's targets, and the validation searches; with --readme, the README's generated blocks too.

    python report.py [--results DIR] [--readme README.md]     # part of `make plots`, after verify.py
"""
import program

if __name__ == "__main__":
    program.quiet_until_ready("report.py")  # Ctrl-C while torch imports: one line; cli.run_tool takes over from there

import csv
import glob
import io
import os
import sys

import numpy as np

import cli
import findings
import results
import rules
import stats


def fmt(v):
    return "–" if v is None else f"{v:.2f}"


def interval_cell(p):
    """'mean [lo, hi]' of the paired differences with the base, or '–' where there is none."""
    if p is None or isinstance(p, str):
        return "–"
    mean, lo, hi = stats.interval(p[1])
    return f"{mean:+.2f}" + ("" if lo is None else f" [{lo:+.2f}, {hi:+.2f}]")


def compare(name, p, c):
    """One sentence: this variant against the base over the seeds both have, or why there is none; c: its entry
    of stats.family over the folder's contrasts."""
    if isinstance(p, str):
        return f"**{name}** is not compared with {rules.BASE}: {p}."
    seeds, _ = p
    if c["lo"] is None:
        return (f"**{name}** − {rules.BASE} = {c['mean']:+.2f} points on seed {seeds[0]} alone; with one seed there is "
                f"no interval, so this cannot be told apart from seed-to-seed noise.")
    return (f"**{name}** − {rules.BASE} = {c['mean']:+.2f} points, 95% paired t-interval [{c['lo']:+.2f}, "
            f"{c['hi']:+.2f}] over {len(seeds)} seeds, p = {findings.fmt_p(c['p'])} (Holm: "
            f"{findings.fmt_p(c['p_holm'])}): {name} {c['verdict']}.")


def contrast_rows(cs, digits=".2f", label=lambda key: key):
    """Table rows: contrast, seeds, mean, 95% interval, p, Holm-adjusted p, 90% interval, verdict."""
    iv = lambda lo, hi: "–" if lo is None else f"[{lo:+{digits}}, {hi:+{digits}}]"
    return [f"| {label(key)} | {c['n']} | {c['mean']:+{digits}} | {iv(c['lo'], c['hi'])} | {findings.fmt_p(c['p'])} | "
            f"{findings.fmt_p(c.get('p_holm'))} | {iv(c.get('lo90'), c.get('hi90'))} | {c.get('verdict') or '–'} |"
            for key, c in cs.items()]


CONTRAST_HEADER = ["| contrast | seeds | mean | 95% interval | p | Holm p | 90% interval | verdict |", "|" + "---|" * 8]


def table_row(name, r, paired):
    cfg, s = r["config"], r["summary"]
    _, acc = stats.curves(r, "test_acc")
    _, secs = stats.curves(r, "seconds")
    mean_curve = np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in np.asarray(acc, float).T])  # no warning where every seed diverged
    best = int(np.nanargmax(mean_curve))
    first = next((i + 1 for i, a in enumerate(mean_curve) if a >= rules.AIM), None)
    n = len(stats.finals(r))
    final = ("diverged" if s["final_test_acc_mean"] is None else f"{s['final_test_acc_mean']:.2f} (1 seed)" if n == 1
             else f"{s['final_test_acc_mean']:.2f} ± {s['final_test_acc_std']:.2f}")
    if s.get("diverged"):
        final += f" ({len(s['diverged'])} diverged)"
    device = (r.get("env") or r["runs"][-1].get("env") or {}).get("device", "?")
    return (f"| {name} | {cfg['l1']:g} | {cfg['l2']:g} | {cfg['epochs']} | {final} | {fmt(s['final_test_acc_min'])} "
            f"| {fmt(s.get('final_test_acc_max'))} | {interval_cell(paired.get(name))} | {mean_curve[best]:.2f} "
            f"({best + 1}) | {first or '–'} | {np.nanmedian(secs):.1f} | {device} | {n} |")


def variant_line(name, r, paired, split, cs):
    mean, goal = r["summary"]["final_test_acc_mean"], rules.TARGETS[r["config"]["norm"]]
    full = not any(r["config"].get(k) for k in ("train_limit", "test_limit", "train_subset", "steps"))
    target = ("" if mean is None or split != "test" or not full else
              f"; reaches the {goal:.2f}% target (mean, final epoch)" if mean >= goal
              else f"; misses the {goal:.2f}% target (mean, final epoch) by {goal - mean:.3f} points")
    low = [s for s, a in stats.finals(r).items() if a < rules.AIM]
    seeds = f" {len(low)} of {len(stats.finals(r))} seeds end below {rules.AIM:.2f}%" + (f" ({low})" if low else "")
    line = f"- **{name}**: final {split} accuracy {stats.describe(r['summary'])}{target};{seeds}."
    return line + (" " + compare(name, paired[name], cs.get(name)) if name in paired else "")


def report(found, recipe=None):
    """REPORT.md's text. A folder holds one split (results.load_folder sees to it); the words say which."""
    split = "validation" if next(iter(found.values()))["config"]["val"] else "test"
    paired = stats.pairs(found)
    cs = findings.contrasts(paired)
    rows = [f"| variant | λ1 | λ2 | epochs | final {split} acc (mean ± std) | min | max | − {rules.BASE}, 95% paired "
            f"interval | best of mean curve (epoch) | first epoch ≥ {rules.AIM:.1f} | s/epoch (median) | device | seeds |",
            "|" + "---|" * 13]
    rows += [table_row(name, r, paired) for name, r in found.items()]
    lines = ["# Report", "", "Generated by `python report.py` from the JSON files beside it; do not edit by hand.",
             f"Accuracies in percent, on the {split} split; \"final\" is the last epoch of every seed, never a picked "
             f"epoch. The paired differences compare each variant with `{rules.BASE}` on the same seeds (same initial "
             "weights, data order and augmentation), with a two-sided 95% Student t-interval; only runs whose configs "
             "differ in nothing but the penalty and the norm are compared.", "", *rows, ""]
    lines += [variant_line(name, r, paired, split, cs) for name, r in found.items()]
    if any(c["p"] is not None for c in cs.values()):
        lines += ["", f"### Contrasts against {rules.BASE}: one family, Holm's correction", "",
                  f"The {len(cs)} contrasts of this folder (every other variant minus {rules.BASE}, final {split} "
                  f"accuracy) form one family, as `rules.FAMILIES['main']` defines for the main study. Verdicts "
                  f"come from Holm's adjusted p at {rules.ALPHA:g}; where that finds no difference, a 90% interval "
                  f"inside ±{rules.MARGIN:g} points (two one-sided tests) says \"equal within ±{rules.MARGIN:g}\".", "",
                  *CONTRAST_HEADER, *contrast_rows(cs)]
    return "\n".join(lines + selection(recipe)) + "\n"


def selection(recipe):
    """The last section: the recipe search and the λ step on the validation split (recipe.json)."""
    if not recipe:
        return []
    base = recipe["candidates"][0]["config"]
    per_seed = lambda c: ", ".join(f"{a:.2f}" for a in c["val_acc"])
    mean = lambda c: "diverged" if c["val_acc_mean"] is None else f"{c['val_acc_mean']:.3f}"
    lines = ["", "## How the recipe and the λ's were chosen (validation split only)", "",
             "Trained on the first 50,000 training images, scored on the last 10,000 (final epoch); the test set "
             f"was not used. Rule, fixed before any candidate ran: {recipe['rule']}.", "",
             "| candidate | differs from the first by | seeds | val acc per seed | mean |", "|---|---|---|---|---|"]
    for c in recipe["candidates"]:
        diff = ", ".join(rules.differences(base, c["config"], ignore=("name",))) or "–"
        chosen = " (chosen)" if c["name"] == recipe["chosen"] else ""
        lines.append(f"| {c['name']}{chosen} | {diff} | {len(c['val_acc'])} | {per_seed(c)} | {mean(c)} |")
    if recipe.get("lambdas"):
        lines += ["", f"λ under the chosen recipe; rule: {recipe['lambda_rule']}.", "",
                  "| penalty | λ | seeds | val acc per seed | mean |", "|---|---|---|---|---|"]
        lines += [f"| {p['penalty']} | {p['lambda']:g} | {len(p['val_acc'])} | {per_seed(p)} | {mean(p)} |"
                  for p in recipe["lambda_points"]]
        lines += ["", "Chosen: " + ", ".join(f"{k} = {'none passed' if v is None else f'{v:g}'}"
                                             for k, v in recipe["lambdas"].items()) + "."]
    return lines


def write(folder, readme=None):
    """REPORT.md, epochs.csv, sweep.json where folder/sweep/ holds the λ sweep, and with readme the README's
    generated blocks: the paths written."""
    found, study = results.load_folder(folder), results.load_datasize(folder)
    choice = results.load_choice(os.path.join(folder, "datasize")) if study else None
    text = report(found, results.load_recipe(folder))
    if study:
        text += "\n".join(datasize_section(stats.datasize_rows(study), choice))
    files = {"REPORT.md": text.encode(), "epochs.csv": epochs_csv(found, study)}
    written = results.write_files(folder, files)
    sweep = os.path.join(folder, "sweep")
    if glob.glob(os.path.join(glob.escape(sweep), "*.json")):
        results.write_sweep(folder, stats.sweep_points(results.load_folder(sweep)))
        written.append(os.path.join(folder, "sweep.json"))
    if readme:
        with open(readme) as f:
            old = f.read()
        new = findings.fill(old, findings.blocks(found, study, choice))
        if new != old:
            results.write_bytes(readme, new.encode())
            written.append(readme)
    return written


# -----------------------------------------------------------------------------
# the data-size study

def datasize_section(rows, choice):
    """REPORT.md's section on the data-size study: per size and variant, the final accuracy and loss and their
    paired differences from none; the two families of contrasts under Holm; the λ chosen per size."""
    cell = lambda r, key, fmt: "–" if r[f"{key}_lo"] is None else \
        f"{r[f'{key}_diff']:+{fmt}} [{r[f'{key}_lo']:+{fmt}}, {r[f'{key}_hi']:+{fmt}}]"
    lines = ["", "## The data-size study", "", "Final test accuracy (%) and loss, mean [min, max] over seeds; `− none`: "
             "mean paired difference from `none` on the same seeds (same subset, initial weights, data order) with its "
             "95% t-interval. Every size trains 9,375 steps of 32 images, evaluated 15 times (`config.epochs` counts "
             "those evaluations, not passes over the data: the passes fall from "
             + ", ".join(f"{r['passes']:g} at {r['size']:,}" for r in rows if r["variant"] == rules.BASE)
             + " images).", "",
             "| training images | variant | seeds | final test acc | − none | final test loss | − none |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']:,} | {r['variant']} | {r['seeds']} | {r['acc_mean']:.2f} [{r['acc_min']:.2f}, "
              f"{r['acc_max']:.2f}] | {cell(r, 'acc', '.2f')} | {r['loss_mean']:.4f} [{r['loss_min']:.4f}, "
              f"{r['loss_max']:.4f}] | {cell(r, 'loss', '.4f')} |" for r in rows if r["acc_mean"] is not None]
    for key, name, digits in (("acc", "datasize_acc", ".2f"), ("loss", "datasize_loss", ".4f")):
        fam = rules.FAMILIES[name]
        tested = {(r["size"], r["variant"]): family_entry(r, key) for r in rows if r[f"{key}_p"] is not None}
        lines += ["", f"Family `{name}`: {fam.what}; Holm's correction over its {len(tested)} contrasts" +
                  (f"; equal within ±{fam.margin:g} where the 90% interval lies inside it." if fam.margin else "."), "",
                  *CONTRAST_HEADER, *contrast_rows(tested, digits, lambda k: f"{k[1]} at {k[0]:,}")]
    lines += ["", "What the intervals say, per size, under Holm's correction in each family:", "", *findings.datasize_findings(rows)]
    if choice:
        lines += ["", "λ per size, chosen on the validation split before that size's test runs (choice.json): "
                  + next(iter(choice["sizes"].values()))["rule"] + ".", "",
                  "| training images | λ1 | λ2 | none, val acc | grid: λ → mean val acc |", "|---|---|---|---|---|"]
        for size, c in sorted(choice["sizes"].items(), key=lambda kv: int(kv[0])):
            pts = ", ".join(f"{p['penalty']} {p['lambda']:g} → {p['val_acc_mean']:.2f}" for p in c["points"]
                            if p["val_acc_mean"] is not None)
            lines.append(f"| {int(size):,} | {c['chosen']['l1']:g} | {c['chosen']['l2']:g} | "
                         f"{c['reference']['val_acc_mean']:.2f} | {pts} |")
        lines += ["", *findings.lambda_notes(choice)]
    return lines + [""]


def family_entry(row, key):
    """A data-size row's contrast in the shape stats.family returns, for contrast_rows."""
    return {"n": row["seeds"], "mean": row[f"{key}_diff"], "lo": row[f"{key}_lo"], "hi": row[f"{key}_hi"],
            "p": row[f"{key}_p"], "p_holm": row[f"{key}_p_holm"], "lo90": row[f"{key}_lo90"],
            "hi90": row[f"{key}_hi90"], "verdict": row[f"{key}_verdict"]}


# -----------------------------------------------------------------------------
# epochs.csv: one row per (study, size, variant, seed, epoch) of the verified test runs, for pandas

CSV_RUN = ["study", "split", "size", "variant", "name", "seed", "l1", "l2", "norm"]
CSV_EPOCH = ["epoch", "step", "train_loss", "penalty", "train_acc", "test_loss", "test_acc", "lr", "momentum", "seconds"]
CSV_NORMS = [f"conv{i}" for i in range(1, 10)]


def epochs_csv(found, study):
    """The per-epoch records of the folder's runs (study "main") and the data-size runs, as CSV bytes; floats as
    the JSON holds them; `size` is the number of training images; norm_convN is ‖w‖₂ of that convolution."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(CSV_RUN + CSV_EPOCH + [f"norm_{k}" for k in CSV_NORMS])
    for label, folder in [("main", found)] + [("datasize", study[n]) for n in sorted(study)]:
        for name, r in folder.items():
            cfg = rules.ADDED | r["config"]  # the main study's files predate train_subset and steps
            size = cfg["train_subset"] or cfg["train_limit"] or (50000 if cfg["val"] else 60000)
            for run in r["runs"]:
                head = [label, "validation" if cfg["val"] else "test", size, r["variant"], name, run["seed"],
                        cfg["l1"], cfg["l2"], cfg["norm"]]
                for e in run["epochs"]:
                    norms = e.get("weight_norm") or {}
                    out.writerow(head + [e.get(k, "") for k in CSV_EPOCH] + [norms.get(k, "") for k in CSV_NORMS])
    return buf.getvalue().replace("None", "").encode()


def main(argv=None):
    p = cli.tool_parser("report.py", __doc__, "folder of <name>.json files (default: the repository's results/)")
    p.add_argument("--readme", help="also refresh this README's generated blocks (make plots: README.md)")
    args = p.parse_args(argv)
    written = cli.run_tool(p, args, lambda: write(args.results, args.readme))
    print("wrote " + ", ".join(os.path.relpath(w) for w in written))


if __name__ == "__main__":
    sys.exit(main())
