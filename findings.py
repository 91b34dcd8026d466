"""The findings in words, from the verified results: the verdicts and sentences REPORT.md and the README share,
and the README's generated blocks, which report.py (`make plots`) writes between their markers; a test fails when
the README differs from what the committed results give, so its result sections state no number not computed here.

    <!-- report.py: NAME -->        the block NAME, generated
    <!-- /report.py -->
"""
import re

import numpy as np

import results
import rules
import stats
from config import Config

def fmt_p(p):
    return "–" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def diff_cell(c):
    """A table's 'mean [lo, hi]' of a contrast (stats.family's entry), the mean alone for one seed, '–' for none."""
    return "–" if not c else f"{c['mean']:+.2f}" + ("" if c["lo"] is None else f" [{c['lo']:+.2f}, {c['hi']:+.2f}]")


def contrasts(paired):
    """stats.family over every variant of the folder that pairs with the base: the folder's family."""
    fam = rules.FAMILIES["main"]
    return stats.family({n: p[1] for n, p in paired.items() if not isinstance(p, str)}, fam.margin, fam.better)


def datasize_findings(rows):
    """One line per size: for accuracy and for loss, the penalties grouped by their verdict under Holm's correction
    in each family, each with its raw 95% interval and p."""
    lines = []
    for size in sorted({r["size"] for r in rows}):
        parts = []
        for key, what, digits in (("acc", "Accuracy", ".2f"), ("loss", "Loss", ".4f")):
            found = [r for r in rows if r["size"] == size and r[f"{key}_verdict"] is not None]
            said = lambda r: (f"{r['variant']} {r[f'{key}_diff']:+{digits}} [{r[f'{key}_lo']:+{digits}}, "
                              f"{r[f'{key}_hi']:+{digits}}] (p {fmt_p(r[f'{key}_p'])}, Holm {fmt_p(r[f'{key}_p_holm'])})")
            verdicts = list(dict.fromkeys(r[f"{key}_verdict"] for r in found))
            if found:
                parts.append(f"{what}: " + "; ".join(
                    f"{', '.join(said(r) for r in found if r[f'{key}_verdict'] == v)} {plural(v, sum(r[f'{key}_verdict'] == v for r in found))}"
                    for v in verdicts) + ".")
        if parts:
            passes = next((r["passes"] for r in rows if r["size"] == size), None)
            lines.append(f"- **{size:,} images** ({passes:g} passes). " + " ".join(parts))
    return lines


def plural(verdict, n):
    """'beats' -> 'beat', 'is ...' -> 'are ...' for a group of n."""
    if n == 1:
        return verdict
    return re.sub(r"^beats ", "beat ", re.sub(r"^is ", "are ", verdict))


def lambda_notes(choice):
    """Per size and penalty: where the chosen λ sits in its grid, and which λ had the highest validation mean when
    the tie rule chose another."""
    lines = []
    for size, c in sorted(choice["sizes"].items(), key=lambda kv: int(kv[0])):
        notes = []
        for key, grid in c["grid"].items():
            pts = {p["lambda"]: p["val_acc_mean"] for p in c["points"] if p["penalty"] == key and p["val_acc_mean"] is not None}
            lam, best = c["chosen"][key], max(pts, key=pts.get)
            edge = " (the grid's smallest)" if lam == min(grid) else " (the grid's largest)" if lam == max(grid) else ""
            tie = (f", though {key} = {best:g} had the higher mean ({pts[best]:.2f} against {pts[lam]:.2f}) and lost "
                   f"by the tie rule" if best != lam else "")
            notes.append(f"{key} = {lam:g}{edge}{tie}")
        lines.append(f"- {int(size):,} images: " + "; ".join(notes) + ".")
    return lines


# -----------------------------------------------------------------------------
# README.md: the blocks between their markers are generated, nothing else

BLOCK = re.compile(r"(<!-- report\.py: ([a-z-]+) -->\n)(.*?)(<!-- /report\.py -->)", re.S)


def fill(text, blocks, every=True):
    """text with each generated block replaced by blocks[name]; ResultsError where a marker names no block, or
    (every: the README, which shows them all) where a block has no marker."""
    marked = [m.group(2) for m in BLOCK.finditer(text)]
    wrong = sorted(marked) != sorted(blocks) if every else (not marked or set(marked) - set(blocks))
    if wrong:
        raise results.ResultsError(f"markers {sorted(marked)} are not the generated blocks {sorted(blocks)}")
    return BLOCK.sub(lambda m: m.group(1) + blocks[m.group(2)] + m.group(4), text)


def blocks(found, study, choice, settled=None):
    """{block name: markdown text ending in a newline} for the README."""
    cs = contrasts(stats.pairs(found))
    out = {"answer": answer(found, cs), "findings": main_findings(found, cs, settled), "recipe": recipe()}
    if study:
        rows = stats.datasize_rows(study)
        out["datasize"] = "\n".join(datasize_findings(rows)) + "\n"
        out["datasize-lambdas"] = "\n".join(lambda_notes(choice)) + "\n" if choice else "–\n"
    if settled:
        out["confirm"] = confirmed(settled, cs)
    return out


def confirmed(settled, cs5=None):
    """The confirmatory study in the plan's words: what is in, and each verdict once its study is complete (with
    confirm.png, which plot.py draws from the same complete studies); the main replication beside the five-seed
    study's contrasts cs5."""
    complete = any(s["contrasts"] for s in settled.values())
    lines = ["![confirm](results/confirm.png)", ""] if complete else []
    for study, title in (("main", "Main replication"), ("mechanism", "Mechanism control")):
        s = settled[study]
        if s["contrasts"] is None:
            lines.append(f"- **{title}:** {s['done']} of {s['total']} runs are in; no verdict until all are.")
            continue
        d = ".2f" if study == "main" else ".4f"  # accuracy points; loss
        said = "; ".join(f"`{a}` {c['verdict']} ({c['mean']:+{d}} [{c['lo']:+{d}}, {c['hi']:+{d}}], Holm p "
                         f"{fmt_p(c['p_holm'])})" for (a, _), c in s["contrasts"].items())
        lines.append(f"- **{title}:** {said}." + (f" The plan's decision: **{s['decision']}**." if s["decision"] else ""))
        lines += [mechanism_shares(s)] if study == "mechanism" else replication(s, cs5 or {})
    return "\n".join(lines) + "\n"


def replication(s, cs5):
    """The main replication against the aim (each variant's mean, the models below AIM) and against the five-seed
    study: where one finds a difference the other does not, or the opposite one, the two disagree."""
    aim = rules.TARGETS["bn"]
    parts, below = against_targets(s["found"], lambda r: aim), below_aim(s["found"])
    both = [(a, cs5[a], c) for (a, _), c in s["contrasts"].items() if cs5.get(a, {}).get("verdict")]
    differ = [(a, old, new) for a, old, new in both
              if old["reject"] != new["reject"] or (new["reject"] and old["side"] != new["side"])]
    said = lambda rows: "; ".join(f"`{a}` {old['verdict']} with {old['n']} seeds, {new['verdict']} with {new['n']}"
                                  for a, old, new in rows)
    return [f"- **Against the aim** ({aim:.2f}%, the mean at the final epoch): {parts}. {below} end below "
            f"{rules.AIM:.2f}%.",
            "- **Against the five-seed study:** " + (f"the two disagree: {said(differ)}." if differ else
                                                      f"no verdict contradicts it: {said(both)}.")]


def mechanism_shares(s):
    """How much of l2's effect each arm alone recovers (arm − none over l2 − none, seed means: point estimates), in
    the primary measure (loss) and the secondary one (accuracy), with what survives Holm's correction there."""
    share = lambda family, arm: 100 * family[(arm, rules.BASE)]["mean"] / family[("l2", rules.BASE)]["mean"]
    loss, acc = s["contrasts"], s["secondary"]
    if not loss[("l2", rules.BASE)]["verdict"].startswith("beats"):
        return f"- **No route to measure:** `l2` {loss[('l2', rules.BASE)]['verdict']} in loss."
    step, head = share(loss, "none_normmatch"), share(loss, "l2_conv9")
    kept = [f"`{a}` {c['verdict']}" for (a, b), c in acc.items() if c["reject"] and b == rules.BASE]
    both = all(loss[(arm, rules.BASE)]["verdict"].startswith("beats") for arm in ("none_normmatch", "l2_conv9"))
    size = next(iter(s["found"].values()))["config"]["train_subset"]  # the plan fixes one size for all
    return (f"- **What each route carries** (point estimates). Alone, `none_normmatch` (l2's norms on conv1-8, no "
            f"penalty) recovers {step:.0f}% of `l2`'s mean loss reduction and `l2_conv9` (the penalty on the "
            f"classifier alone) {head:.0f}%; " +
            ("together more than 100%, so the two routes seem to overlap (the plan tests no interaction). "
             if step + head > 100 else f"together {step + head:.0f}%. ") +
            (f"In accuracy (secondary, decides nothing) the shares are {share(acc, 'none_normmatch'):.0f}% and "
             f"{share(acc, 'l2_conv9'):.0f}%, but against `{rules.BASE}` only {', '.join(kept) if kept else 'no arm'} "
             f"after Holm's correction." if acc[("l2", rules.BASE)]["mean"] else
             "In accuracy (secondary) `l2` and `none` do not differ on average.") + (
                f" Each route alone lowers the loss, so at {size:,} images L2 acts through both the effective step "
                f"of the scale-invariant layers and the classifier; which carries more is not tested (the larger "
                f"share: the {'classifier' if head > step else 'effective step'})." if both else ""))


def recipe():
    """The recipe bullet, from Config's defaults (which a test ties to what results/recipe.json chose)."""
    c = Config()
    momentum = (f"momentum cycled {c.momentum_range[1]:g} -> {c.momentum_range[0]:g} -> {c.momentum_range[1]:g}"
                if c.cycle_momentum else f"momentum {c.momentum:g}")
    return (f"- **Recipe** (`config.Config`, chosen on the validation split: `results/recipe.json`): batch "
            f"{c.batch_size}, SGD with Nesterov momentum, one-cycle learning rate peaking at {c.lr:g} after "
            f"{c.warmup:.0%} of the steps ({momentum}), {c.epochs} epochs, random rotation ±{c.rotate_deg:g}°, "
            f"dropout {c.dropout:g}, {c.precision} autocast and a {'compiled' if c.compile else 'eager'} step "
            f"(evaluation in fp32).\n")


def answer(found, cs):
    """The main table: per variant its λ's, final accuracy over seeds, the paired difference from none with its
    95% interval, p with Holm's adjusted p, and the verdict."""
    lines = [f"| variant | λ1 | λ2 | final test acc (mean ± std) | min | max | − {rules.BASE}, 95% paired interval "
             f"| p (Holm) | verdict |", "|" + "---|" * 9]
    for name, r in found.items():
        s, c = r["summary"], cs.get(name)
        p = "–" if not c or c["p"] is None else f"{fmt_p(c['p'])} ({fmt_p(c['p_holm'])})"
        verdict = "–" if not c or not c.get("verdict") else c["verdict"]
        lines.append(f"| {name} | {r['config']['l1']:g} | {r['config']['l2']:g} | {s['final_test_acc_mean']:.2f} ± "
                     f"{s['final_test_acc_std']:.2f} | {s['final_test_acc_min']:.2f} | {s['final_test_acc_max']:.2f} "
                     f"| {diff_cell(c)} | {p} | {verdict} |")
    return "\n".join(lines) + "\n"


def grouped(cs, names):
    """'l1, l2 and l1l2 are equal within ±0.1 to none; gbn is not distinguishable from none'."""
    verdicts = list(dict.fromkeys(cs[n]["verdict"] for n in names))
    parts = []
    for v in verdicts:
        who = [f"`{n}`" for n in names if cs[n]["verdict"] == v]
        listed = who[0] if len(who) == 1 else ", ".join(who[:-1]) + " and " + who[-1]
        parts.append(f"{listed} {plural(v, len(who))}")
    return "; ".join(parts)


def span(values, digits=1):
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}-{hi:.{digits}f}"


def main_findings(found, cs, settled=None):
    """The main study's findings, as bullets whose every number is computed here."""
    base, lines = found[rules.BASE], []
    tested = [n for n in found if n in cs and cs[n].get("verdict")]
    changed = [n for n in tested if cs[n]["reject"]]
    head = (f"No variant's final accuracy differs measurably from `{rules.BASE}`'s" if not changed else
            f"{', '.join(f'`{n}`' for n in changed)} {'differs' if len(changed) == 1 else 'differ'} from `{rules.BASE}`")
    lines.append(f"- **{head}** ({base['config']['epochs']} epochs; Holm's correction over the {len(tested)} "
                 f"contrasts): {grouped(cs, tested)}. \"Equal within ±{rules.MARGIN:g}\" means the 90% interval "
                 f"lies inside ±{rules.MARGIN:g} points; a difference of a few hundredths is not resolved by "
                 f"{len(stats.finals(base))} seeds." + replicated(settled))
    lines.append(targets(found, settled))
    if all(n in found for n in ("l1", "l2", "l1l2")):
        lines.append(effective_step(found, settled))
        nz = {n: 100 * np.mean([run["near_zero_fraction"] for run in stats.ok_runs(r)]) for n, r in found.items()}
        lines.append(f"- **L1 sparsifies:** {nz['l1']:.1f}% of `l1`'s convolution weights end below "
                     f"{100 * 0.01:.0f}% of their layer's largest |w|, {nz[rules.BASE]:.1f}% without a penalty and "
                     f"{nz['l2']:.1f}% with L2 ([weights.png](results/weights.png)); in accuracy `l1` "
                     f"{cs['l1']['verdict']}.")
    if "gbn" in found:
        std = {n: r["summary"]["final_test_acc_std"] for n, r in found.items()}
        secs = {n: np.median([e["seconds"] for run in stats.ok_runs(r) for e in run["epochs"]]) for n, r in found.items()}
        widest = max(std, key=std.get)
        lines.append(f"- **Ghost BN** (virtual batches of {found['gbn']['config']['virtual_batch']}): `gbn` has a "
                     f"std over seeds of {std['gbn']:.2f} points against `{rules.BASE}`'s {std[rules.BASE]:.2f} "
                     f"(the widest: `{widest}`, {std[widest]:.2f}), at {secs['gbn'] / secs[rules.BASE]:.1f}x the "
                     f"median time per epoch.")
    return "\n".join(lines) + "\n"


def replicated(settled):
    """' On 20 fresh seeds ... the confirmatory study finds: ...' once its main replication is complete, else ''."""
    main = settled and settled["main"]["contrasts"]
    if not main:
        return ""
    cs = {a: c for (a, _), c in main.items()}
    return (f" On {min(c['n'] for c in cs.values())} fresh seeds per variant, at the ±{rules.CONFIRM_MARGIN:g} the "
            f"question asks for, the confirmatory study ([below](#settling-it-the-confirmatory-study)) finds: "
            f"{grouped(cs, list(cs))}.")


def against(mean, goal):
    """'reaches 99.45 by 0.002' or 'misses 99.45 by 0.034': a mean against its target, with the margin."""
    return f"reaches {goal:.2f} by {mean - goal:.3f}" if mean >= goal else f"misses {goal:.2f} by {goal - mean:.3f}"


def against_targets(found, goal):
    """'`none` 99.452 reaches 99.45 by 0.002; ...': each variant's mean against its goal(r)."""
    return "; ".join(f"`{name}` {r['summary']['final_test_acc_mean']:.3f} "
                     f"{against(r['summary']['final_test_acc_mean'], goal(r))}" for name, r in found.items())


def below_aim(found):
    """'k of the n models': how many of all the models end below the aim."""
    finals = [a for r in found.values() for a in stats.finals(r).values()]
    return f"{sum(a < rules.AIM for a in finals)} of the {len(finals)} models"


def targets(found, settled=None):
    """The targets bullet: each variant's mean against the target of its norm, and the seeds below the aim; once the
    main replication is complete, how its fresh seeds fare against the same aim."""
    parts, below = against_targets(found, lambda r: rules.TARGETS[r["config"]["norm"]]), below_aim(found)
    fresh = settled and settled["main"]["contrasts"] and settled["main"]["found"]
    reach = [f"`{n}`" for n, r in (fresh or {}).items() if r["summary"]["final_test_acc_mean"] >= rules.TARGETS["bn"]]
    return (f"- **Targets** (five-seed mean at the final epoch; {rules.TARGETS['bn']:.2f}% with BatchNorm, "
            f"{rules.TARGETS['gbn']:.2f}% with Ghost BN): {parts}. {below} end below {rules.AIM:.2f}% (REPORT.md "
            f"names them)." + (f" On the confirmatory study's fresh seeds {', '.join(reach) or 'no variant'} "
                               f"{'reach' if len(reach) > 1 else 'reaches'} {rules.TARGETS['bn']:.2f}% on average, and "
                               f"{below_aim(fresh)} end below {rules.AIM:.2f}% "
                               f"([below](#settling-it-the-confirmatory-study))." if fresh else ""))


def effective_step(found, settled=None):
    """What the weight norms show: how much smaller L2 keeps them, the effective step per epoch range, the
    accuracy dip in the middle; stated as a measurement, and with what the mechanism control decided once it is
    complete."""
    base, l2 = found[rules.BASE], found["l2"]
    final = lambda r, k: np.mean([run["epochs"][-1]["weight_norm"][k] for run in stats.ok_runs(r)])
    shrink = [final(base, k) / final(l2, k) for k in stats.SCALE_INVARIANT]
    ratios = {n: stats.step_ratio(found[n], base) for n in ("l2", "l1l2", "l1")}
    per_range = lambda n: ", ".join(f"{span(ratios[n][a - 1:b])}x in epochs {a}-{b}" for a, b in stats.EPOCH_RANGES)
    _, acc_l2 = stats.curves(l2, "test_acc")
    _, acc_base = stats.curves(base, "test_acc")
    a, b = stats.EPOCH_RANGES[1]
    mid = lambda arr: span(np.nanmean(arr, 0)[a - 1:b])
    return (f"- **L2 shrinks the weights, and with them the step grows.** At the last epoch `l2`'s conv1-8 norms "
            f"are {span(shrink)}x smaller than `{rules.BASE}`'s, conv9's (the classifier, not followed by BatchNorm) "
            f"{final(base, 'conv9') / final(l2, 'conv9'):.1f}x. The effective step lr/Σ₁₋₈‖w‖² of these "
            f"scale-invariant layers is, relative to `{rules.BASE}`'s: `l2` {per_range('l2')}, "
            f"{ratios['l2'][-1]:.1f}x at the end; `l1l2` {ratios['l1l2'][-1]:.1f}x and `l1` {ratios['l1'][-1]:.1f}x "
            f"at the end ([norms.png](results/norms.png)). Through epochs {a}-{b} `l2`'s mean test accuracy is "
            f"{mid(acc_l2)}% against `{rules.BASE}`'s {mid(acc_base)}%; it catches up as the one-cycle schedule anneals. This is "
            f"consistent with a penalty behind BatchNorm acting as a larger learning rate rather than a smaller "
            f"model (van Laarhoven 2017); " + control(settled))


def control(settled):
    """What the mechanism control says of that reading, once it is complete."""
    decision = settled and settled["mechanism"]["decision"]
    if not decision:
        return "no control has tested it yet."
    size = next(iter(settled["mechanism"]["found"].values()))["config"]["train_subset"]
    return (f"the control at {size:,} images, where L2's effect on the loss is large, decides **{decision}** "
            f"([below](#settling-it-the-confirmatory-study)); at 60,000 images no control was run.")
